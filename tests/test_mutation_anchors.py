"""The fast part of tests/wiring_mutations.py, in the suite: every planted wiring bug still
finds the text it changes (a stale one fails here, not silently in the script), and one bug,
planted in a copy of the tree, is caught by the test named for it. The whole script (every
bug planted and its tests run) is run by hand: `python tests/wiring_mutations.py`."""
import pytest

import wiring_mutations


@pytest.mark.parametrize("bug", wiring_mutations.BUGS, ids=lambda bug: bug.name[:48])
def test_every_planted_bug_still_finds_its_text(bug):
  assert wiring_mutations.stale(bug) is None


def test_a_stale_bug_is_reported_not_skipped(tmp_path):
  bug = wiring_mutations.BUGS[0]._replace(text="a line that the code does not hold")
  assert "found 0 times" in wiring_mutations.stale(bug)


@pytest.mark.slow
def test_a_planted_bug_is_caught_by_the_test_named_for_it(tmp_path):
  (bug,) = [b for b in wiring_mutations.BUGS if b.name == "every seed sees the same data order"]
  assert wiring_mutations.caught_by(tmp_path / "tree", bug) == (
      "tests/test_digits_data.py::"
      "test_each_seed_draws_its_own_data_order_and_a_seed_always_the_same")
