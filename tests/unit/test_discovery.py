"""Discovery planning and provider status aggregation (pure)."""

import attr
from twisted.trial import unittest

from imapsvc.core.discovery import (
    DiscoveryPlan,
    aggregate_status,
    plan_discovery,
    provider_problem,
)
from imapsvc.model import ProviderConfig


def provider(tenant="t1", pid="p1", **kw):
    kw.setdefault("host", "imap.example.com")
    kw.setdefault("port", 993)
    return ProviderConfig(
        tenant=tenant, provider_id=pid, provider_name="n", mailbox=f"{pid}@x", **kw
    )


class PlanTests(unittest.TestCase):
    def test_new_provider_started(self):
        p = provider()
        plan = plan_discovery([p], {}, {}, 5)
        self.assertEqual(plan.start, (p,))
        self.assertEqual((plan.stop, plan.restart, plan.update), ((), (), ()))

    def test_gone_provider_stopped(self):
        p = provider()
        plan = plan_discovery([], {p.key: p}, {"t1": 1}, 5)
        self.assertEqual(plan.stop, (p.key,))
        self.assertEqual(plan.start, ())

    def test_unchanged_provider_left_alone(self):
        p = provider()
        plan = plan_discovery([p], {p.key: p}, {"t1": 1}, 5)
        self.assertEqual(plan, DiscoveryPlan())

    def test_signature_change_restarts(self):
        p = provider()
        for change in [
            {"host": "other"},
            {"port": 143},
            {"secure": False},
            {"allow_starttls": True},
            {"auth_type": "oauth2"},
            {"username": "u2"},
            {"folder_filters": ("INBOX", "Support")},
        ]:
            q = attr.evolve(p, **change)
            plan = plan_discovery([q], {p.key: p}, {"t1": 1}, 5)
            self.assertEqual(plan.restart, (q,), change)
            self.assertEqual(plan.update, ())

    def test_credential_change_updates_without_restart(self):
        p = provider(auth_type="oauth2")
        q = attr.evolve(p, access_token="new-token", max_emails_per_sync=10)
        plan = plan_discovery([q], {p.key: p}, {"t1": 1}, 5)
        self.assertEqual(plan.update, (q,))
        self.assertEqual(plan.restart, ())

    def test_tenant_limit_counts_folders(self):
        a = provider(pid="a", folder_filters=("INBOX", "B", "C"))
        b = provider(pid="b", folder_filters=("INBOX", "B"))
        c = provider(pid="c")
        plan = plan_discovery([a, b, c], {}, {}, 5)
        self.assertEqual([p.provider_id for p in plan.start], ["a", "b"])
        self.assertEqual([k for k, _ in plan.waiting], [c.key])
        self.assertIn("limit", plan.waiting[0][1])

    def test_limit_is_per_tenant(self):
        a = provider(tenant="t1", pid="a", folder_filters=("1", "2", "3", "4", "5"))
        b = provider(tenant="t2", pid="b")
        plan = plan_discovery([a, b], {}, {}, 5)
        self.assertEqual(len(plan.start), 2)

    def test_stops_free_capacity_first(self):
        old = provider(pid="old", folder_filters=("1", "2", "3", "4", "5"))
        new = provider(pid="new")
        plan = plan_discovery([new], {old.key: old}, {"t1": 5}, 5)
        self.assertEqual(plan.stop, (old.key,))
        self.assertEqual(plan.start, (new,))

    def test_tenant_filter(self):
        a = provider(tenant="t1", pid="a")
        b = provider(tenant="t2", pid="b")
        plan = plan_discovery([a, b], {b.key: b}, {"t2": 1}, 5, tenants=frozenset({"t1"}))
        self.assertEqual(plan.start, (a,))
        self.assertEqual(plan.stop, (b.key,))


class StatusTests(unittest.TestCase):
    def test_all_selected_is_connected(self):
        s = aggregate_status({"INBOX": ("Idling", None), "B": ("Syncing", None)})
        self.assertEqual(s, ("connected", None))

    def test_first_error_reported(self):
        s = aggregate_status(
            {"INBOX": ("Idling", None), "Z": ("NeedsReauth", "bad"), "A": ("Backoff", "refused")}
        )
        self.assertEqual(s, ("error", "A: refused"))

    def test_connecting_is_disconnected(self):
        self.assertEqual(aggregate_status({"INBOX": ("Connecting", None)})[0], "disconnected")
        self.assertEqual(aggregate_status({})[0], "disconnected")


class ProblemTests(unittest.TestCase):
    """Rows that cannot run are named with a reason, the rest planned."""

    def test_good_rows_have_no_problem(self):
        for kw in [
            {},
            {"host": "IMAP.Example.COM"},
            {"host": "bücher.example"},
            {"host": "127.0.0.1"},
            {"host": "::1"},
            {"host": "example.com."},
            # Without TLS the name is never IDNA-encoded: an internal name works.
            {"host": "imap_1.corp", "secure": False},
        ]:
            self.assertIsNone(provider_problem(provider(**kw)), kw)

    def test_tls_hosts_that_fail_idna(self):
        # Each of these raised out of optionsForClientTLS and stopped discovery.
        for host, words in [
            ("a" * 64 + ".example.com", "Label too long"),
            ("xn--zz.example.com", "A-label"),
            ("xn--.com", "A-label"),
            ("foo..bar", "Empty Label"),
            ("-bad.example.com", "hyphen"),
            ("imap_1.example.com", "U+005F"),
        ]:
            for kw in ({"secure": True}, {"secure": False, "allow_starttls": True}):
                problem = provider_problem(provider(host=host, **kw))
                self.assertIsNotNone(problem, (host, kw))
                self.assertIn("not a valid host name for TLS", problem)
                self.assertIn(words, problem)

    def test_long_host_is_cut_in_the_reason(self):
        problem = provider_problem(provider(host="a" * 250 + ".example.com"))
        self.assertLess(len(problem), 250)

    def test_other_problems(self):
        self.assertEqual(provider_problem(provider(host="")), "host is empty")
        self.assertIn("blanks", provider_problem(provider(host=" imap.example.com")))
        self.assertIn("port 0", provider_problem(provider(port=0)))
        self.assertIn("port 70000", provider_problem(provider(port=70000)))
        self.assertIn("auth_type 'kerberos'", provider_problem(provider(auth_type="kerberos")))
        self.assertEqual(
            provider_problem(provider(config_error="unreadable configuration: x")),
            "unreadable configuration: x",
        )

    def test_bad_row_in_the_middle_does_not_stop_the_others(self):
        a, c = provider(pid="a"), provider(pid="c")
        b = provider(pid="b", host="x" * 64 + ".example.com")
        plan = plan_discovery([a, b, c], {}, {}, 5)
        self.assertEqual(plan.start, (a, c))
        [(key, reason)] = plan.invalid
        self.assertEqual(key, b.key)
        self.assertIn("Label too long", reason)

    def test_running_provider_that_turns_bad_is_stopped(self):
        p = provider()
        bad = attr.evolve(p, host="xn--.example.com")
        plan = plan_discovery([bad], {p.key: p}, {"t1": 1}, 5)
        self.assertEqual(plan.stop, (p.key,))
        self.assertEqual([k for k, _ in plan.invalid], [p.key])
        self.assertEqual((plan.start, plan.restart, plan.update), ((), (), ()))

    def test_invalid_rows_use_no_capacity(self):
        bad = provider(pid="a", port=0, folder_filters=("A", "B", "C", "D", "E"))
        good = provider(pid="b")
        plan = plan_discovery([bad, good], {}, {}, 1)
        self.assertEqual(plan.start, (good,))
        self.assertEqual(plan.waiting, ())

    def test_repeated_filters_count_once(self):
        # ("INBOX", "inbox") is one connection: it fits a limit of one.
        p = provider(folder_filters=("INBOX", "inbox", " INBOX"))
        self.assertEqual(p.folders, ("INBOX",))
        plan = plan_discovery([p], {}, {}, 1)
        self.assertEqual(plan.start, (p,))
