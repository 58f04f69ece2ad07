"""Unit tests of the pure folder state machine (imapsvc.core.folder_machine)."""

from __future__ import annotations

import attr
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core import folder_machine as M


def at(state: str, **fields) -> M.Machine:
    return M.Machine(state=state, **fields)


def fire(m: M.Machine, name: str, **kw) -> tuple[M.Machine, tuple[str, ...]]:
    return M.step(m, M.Event(name, **kw))


class TransitionTests(SynchronousTestCase):
    def test_every_legal_transition_is_entered(self):
        seen = 0
        for old in M.ALL_STATES:
            for event, target in M.TARGETS.items():
                if target == old or target not in M.TRANSITIONS[old]:
                    continue
                new, actions = fire(at(old), event)
                self.assertEqual(new.state, target, (old, event))
                self.assertEqual(actions, (M.ENTERED,), (old, event))
                seen += 1
        # Every edge of the table is reachable through some event.
        self.assertEqual(seen, sum(
            sum(1 for e, t in M.TARGETS.items() if t in M.TRANSITIONS[s] and t != s)
            for s in M.ALL_STATES
        ))
        edges = {(s, t) for s in M.ALL_STATES for t in M.TRANSITIONS[s]}
        reachable = {(s, t) for s, t in edges if t in M.TARGETS.values()}
        self.assertEqual(edges, reachable)

    def test_every_illegal_transition_is_refused(self):
        refused = 0
        for old in M.ALL_STATES:
            for event, target in M.TARGETS.items():
                if target == old or target in M.TRANSITIONS[old]:
                    continue
                m = at(old, wake_pending=True)
                with self.assertRaises(M.IllegalTransition):
                    fire(m, event)
                refused += 1
        self.assertGreater(refused, 20)
        # For example: IDLE straight after the login, never through a sync.
        self.assertRaises(M.IllegalTransition, fire, at(M.AUTHENTICATING), M.IDLE)
        self.assertRaises(M.IllegalTransition, fire, at(M.NEEDS_REAUTH), M.BACKED_OFF)

    def test_staying_in_a_state_is_no_transition(self):
        for event, target in M.TARGETS.items():
            new, actions = fire(at(target), event)
            self.assertEqual((new.state, actions), (target, ()))

    def test_unknown_event_is_refused(self):
        self.assertRaises(ValueError, fire, at(M.IDLING), "nap")

    def test_state_names_are_re_exported(self):
        from imapsvc import folder_state as S

        self.assertIs(S.TRANSITIONS, M.TRANSITIONS)
        self.assertEqual(S.IDLING, "Idling")
        self.assertTrue(S.allowed(M.SYNCING, M.IDLING))
        self.assertFalse(S.allowed(M.IDLING, M.SELECTED))


class FlagTests(SynchronousTestCase):
    def test_sync_consumes_a_pending_wake_up(self):
        new, _ = fire(at(M.IDLING, wake_pending=True), M.SYNC)
        self.assertFalse(new.wake_pending)

    def test_wake_while_syncing_is_kept_for_after_the_pass(self):
        new, actions = fire(at(M.SYNCING), M.WAKE, why="wake-up")
        self.assertTrue(new.wake_pending)
        self.assertEqual(actions, ())

    def test_wake_during_a_poll_releases_it(self):
        m, _ = fire(at(M.SYNCING), M.POLL)
        self.assertTrue(m.polling)
        new, actions = fire(m, M.WAKE, why="wake-up")
        self.assertEqual(actions, (M.RELEASE_POLL,))
        self.assertFalse(fire(new, M.POLL_ENDED)[0].polling)

    def test_wake_during_idle_sends_done_once(self):
        m, _ = fire(at(M.SYNCING), M.IDLE)
        m, _ = fire(m, M.IDLE_SENT)
        m, actions = fire(m, M.WAKE, why="wake-up")
        self.assertEqual(actions, (M.SEND_DONE,))
        self.assertEqual(m.idle_ended_for, "wake-up")
        # The session now has DONE out: a later reason is kept, not resent.
        again, actions = fire(m, M.END_IDLE, why="EXISTS 3", done_sent=True)
        self.assertEqual(actions, ())
        self.assertEqual(again.idle_ended_for, "EXISTS 3")

    def test_keepalive_never_overrides_a_stronger_reason(self):
        m = at(M.IDLING, idle_sent=True, idle_ended_for="EXISTS 3")
        new, actions = fire(m, M.END_IDLE, why=M.IDLE_KEEPALIVE, done_sent=True)
        self.assertEqual((new, actions), (m, ()))
        self.assertFalse(M.idle_again(new, exists_changed=False))

    def test_wake_before_idle_is_sent_is_kept(self):
        m, _ = fire(at(M.SYNCING), M.IDLE)
        new, actions = fire(m, M.END_IDLE, why="wake-up")
        self.assertEqual(actions, ())
        self.assertTrue(new.wake_pending)
        quiet, _ = fire(m, M.END_IDLE, why=M.IDLE_KEEPALIVE)
        self.assertFalse(quiet.wake_pending)

    def test_idle_again_only_after_a_quiet_keepalive(self):
        m = at(M.IDLING, idle_ended_for=M.IDLE_KEEPALIVE)
        self.assertTrue(M.idle_again(m, exists_changed=False))
        self.assertFalse(M.idle_again(m, exists_changed=True))
        for field in ("wake_pending", "stopping", "token_refresh_due"):
            self.assertFalse(M.idle_again(attr.evolve(m, **{field: True}), False), field)

    def test_stop_is_kept_until_start(self):
        new, actions = fire(at(M.SELECTED, polling=True), M.STOP)
        self.assertTrue(new.stopping)
        # The shell releases the poll itself, after it stopped the factory.
        self.assertEqual(actions, ())
        self.assertFalse(fire(new, M.START)[0].stopping)
        # A stopping folder reports no token expiry and never idles again.
        self.assertFalse(M.idle_again(attr.evolve(new, idle_ended_for=M.IDLE_KEEPALIVE), False))

    def test_token_expiring_ends_idle_or_a_poll(self):
        m = at(M.IDLING, idle_sent=True)
        new, actions = fire(m, M.TOKEN_EXPIRING)
        self.assertTrue(new.token_refresh_due)
        self.assertEqual(actions, (M.SEND_DONE,))
        _, actions = fire(at(M.SELECTED, polling=True), M.TOKEN_EXPIRING)
        self.assertEqual(actions, (M.RELEASE_POLL,))
        stopping = at(M.IDLING, idle_sent=True, stopping=True)
        self.assertEqual(fire(stopping, M.TOKEN_EXPIRING), (stopping, ()))

    def test_planned_reconnect_is_consumed_by_the_connection_end(self):
        m, _ = fire(at(M.IDLING), M.PLAN_RECONNECT, why=M.TOKEN_REFRESH)
        self.assertEqual(m.planned_reconnect, M.TOKEN_REFRESH)
        self.assertIsNone(fire(m, M.CONNECTION_ENDED)[0].planned_reconnect)
        m, _ = fire(at(M.SYNCING, token_refresh_due=True), M.PLAN_RECONNECT, why=M.TOKEN_REFUSED)
        fresh, _ = fire(m, M.SESSION)
        self.assertEqual((fresh.planned_reconnect, fresh.token_refresh_due), (None, False))
