"""The dedupe decisions of one batch (imapsvc.core.ledger), which every
store applies before it looks at the ledger."""

from __future__ import annotations

from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.ledger import check_records, first_occurrences, last_message_id
from imapsvc.model import OUTCOME_DUPLICATE, OUTCOME_PUBLISHED, OUTCOME_SKIPPED, MessageRecord


def record(uid: int, message_id: Optional[str] = None, outcome: str = OUTCOME_PUBLISHED,
           key: Optional[str] = None) -> MessageRecord:
    fields = {"event_id": f"e{uid}"} if outcome == OUTCOME_PUBLISHED else None
    return MessageRecord(key or f"imap:box:7:{uid}", "INBOX", "7", uid, message_id, outcome,
                         f"e{uid}", fields=fields)


class FirstOccurrencesTests(SynchronousTestCase):
    def test_distinct_records_are_all_first(self) -> None:
        self.assertEqual(first_occurrences([record(1, "<a>"), record(2, "<b>"), record(3)]),
                         [True, True, True])

    def test_repeated_dedupe_key_is_not_first(self) -> None:
        batch = [record(1), record(2), record(9, key="imap:box:7:1")]
        self.assertEqual(first_occurrences(batch), [True, True, False])

    def test_repeated_message_id_is_not_first(self) -> None:
        self.assertEqual(first_occurrences([record(1, "<a>"), record(2, "<a>")]), [True, False])

    def test_a_duplicate_does_not_claim_its_message_id(self) -> None:
        # The third record's id was only seen on a record that was itself a
        # duplicate (by key): it stays new.
        batch = [record(1), record(5, "<x>", key="imap:box:7:1"), record(3, "<x>")]
        self.assertEqual(first_occurrences(batch), [True, False, True])

    def test_records_without_message_id_never_collide_by_id(self) -> None:
        self.assertEqual(first_occurrences([record(1), record(2)]), [True, True])


class LastMessageIdTests(SynchronousTestCase):
    def test_last_new_record_with_an_id(self) -> None:
        batch = [record(1, "<a>"), record(2, "<b>"), record(3)]
        self.assertEqual(last_message_id(batch, [True, True, True]), "<b>")

    def test_records_not_new_are_passed_over(self) -> None:
        batch = [record(1, "<a>"), record(2, "<b>")]
        self.assertEqual(last_message_id(batch, [True, False]), "<a>")

    def test_none_when_nothing_new_has_an_id(self) -> None:
        self.assertIsNone(last_message_id([record(1, "<a>"), record(2)], [False, True]))
        self.assertIsNone(last_message_id([], []))


class CheckRecordsTests(SynchronousTestCase):
    def test_published_and_skipped_pass(self) -> None:
        check_records([record(1), record(2, outcome=OUTCOME_SKIPPED)])

    def test_other_outcome_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            check_records([record(1), record(2, outcome=OUTCOME_DUPLICATE)])

    def test_published_without_fields_is_refused(self) -> None:
        bare = MessageRecord("imap:box:7:1", "INBOX", "7", 1, None, OUTCOME_PUBLISHED, "e1")
        with self.assertRaises(ValueError) as caught:
            check_records([bare])
        self.assertIn("imap:box:7:1", str(caught.exception))
