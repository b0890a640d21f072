"""``unseen_path``: the states a driver reading only the latest status did not see, replayed
along the transition table (the planner's ``TRANSITIONS``, never a planner move)."""

from __future__ import annotations

from server.rollout_planner import TRANSITIONS, TerminalState, unseen_path

S = TerminalState


def test_a_skipped_state_is_filled_in_from_the_transition_table() -> None:
    assert unseen_path(S.DOWNLOADING, S.INSTALLING) == (S.DOWNLOADED, S.INSTALLING)
    assert unseen_path(S.NOTIFIED, S.SUCCEEDED) == (S.SUCCEEDED,)
    assert unseen_path(S.DOWNLOADED, S.SUCCEEDED) == (S.INSTALLING, S.HEALTH_CHECK, S.SUCCEEDED)
    assert unseen_path(S.DOWNLOADING, S.ROLLED_BACK) == (S.DOWNLOADED, S.INSTALLING, S.ROLLED_BACK)


def test_no_path_leads_out_of_a_final_state_or_through_a_planner_move() -> None:
    assert unseen_path(S.SUCCEEDED, S.FAILED) is None
    assert unseen_path(S.INSTALLING, S.DOWNLOADING) is None
    assert unseen_path(S.FAILED, S.DOWNLOADING) is None  # would pass pending and notified


def test_every_step_of_every_path_is_an_allowed_transition() -> None:
    for known in TerminalState:
        for latest in TerminalState:
            path = unseen_path(known, latest) if known is not latest else None
            if path is None:
                continue
            assert path[-1] is latest
            for before, after in zip((known, *path), path, strict=False):
                assert after in TRANSITIONS[before]
