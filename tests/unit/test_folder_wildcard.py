"""The ``*`` folder filter on the verified fakes (issue 13 item 4,
SPECIAL-USE): every selectable folder but Sent/Drafts/Junk/Trash/All on one
connection; a folder named explicitly keeps its own connection."""

from __future__ import annotations

import attr
from twisted.trial.unittest import SynchronousTestCase

from imapsvc import folder_state as S
from imapsvc.folder import FolderService
from imapsvc.testing import FakeIMAPSession
from tests.unit import test_folder_on_fake as base
from tests.unit.test_folder_on_fake import OPTIONS, PasswordSource, World, mail


class WildcardWorld(World):
    def __init__(self, filters: tuple[str, ...]) -> None:
        super().__init__()
        self.provider = attr.evolve(self.provider, folder_filters=filters)
        for name, flag in (("Support", None), ("Sent", "\\Sent"), ("Junk", "\\Junk"),
                           ("Trash", "\\Trash"), ("Billing", None)):
            folder = self.mailbox.add_folder(name)
            if flag:
                folder.flags = ("\\HasNoChildren", flag)
        for n, name in enumerate(("INBOX", "Support", "Sent", "Junk", "Trash", "Billing"), 1):
            self.mailbox.append(mail(n), folder=name)

    def wildcard_folder(self) -> FolderService:
        svc = FolderService(
            self.provider, "*", self.reactor, self.store, self.pipeline, PasswordSource(),
            base.OWNER, attr.evolve(OPTIONS, max_emails_per_sync=50),
            hooks=self.hooks,
            protocol_factory=lambda: FakeIMAPSession(self.mailbox, at_once=self.at_once),
            tls_factory=lambda host: None, rand=lambda: 0.5,
        )
        self._connected = svc.factory.connect_calls
        return svc

    def recorded_folders(self) -> list[str]:
        return sorted({row["folder"] for row in self.store.ledger_rows(*self.provider.key)})


class WildcardTests(SynchronousTestCase):
    setUp = base.FolderOnFakeTests.setUp
    _stop = base.FolderOnFakeTests._stop

    def wworld(self, filters: tuple[str, ...]) -> WildcardWorld:
        world = WildcardWorld(filters)
        self.addCleanup(self._stop, world)
        return world

    def test_every_folder_but_special_use(self) -> None:
        world = self.wworld(("*",))
        svc = world.wildcard_folder()
        self._services.append(svc)
        world.start(svc)
        self.assertEqual(world.recorded_folders(), ["Billing", "INBOX", "Support"])
        self.assertEqual(svc.state, S.SELECTED)  # polling, not IDLE
        # New mail in any of them comes with the next poll.
        world.mailbox.append(mail(9), folder="Billing")
        world.mailbox.append(mail(10), folder="Junk")
        world.reactor.advance(OPTIONS.poll_interval_ms / 1000.0 * 1.2)
        uids = sorted((r["folder"], r["uid"]) for r in world.store.ledger_rows(*world.provider.key))
        self.assertIn(("Billing", 2), uids)
        self.assertNotIn("Junk", world.recorded_folders())

    def test_named_folders_are_left_to_their_own_connection(self) -> None:
        # "Sent" named explicitly is watched (by its own folder service);
        # "Support" too, so the wildcard connection leaves both alone.
        world = self.wworld(("*", "Sent", "Support"))
        svc = world.wildcard_folder()
        self._services.append(svc)
        world.start(svc)
        self.assertEqual(world.recorded_folders(), ["Billing", "INBOX"])
