"""agent.claims: the numbers and labels an agent states, checked against its prompt and earlier observations."""

from __future__ import annotations

from recthinker.agent.claims import check_text, claim_counts, shown, trajectory_claims
from recthinker.agent.trajectory import Step, ToolCallRecord, Trajectory
from recthinker.eval.harness import summarize_rows
from recthinker.serve.app import claim_events

PROMPT = """User: u1
History (oldest to newest, 3 of 3 items):
- A (1990) | Comedy, Romance
- B (1991) | Drama
- C (1992) | Comedy, Sci-Fi

Candidates:
[1] D (1993) | Comedy
[2] E (1994) | Horror
[3] F (1995) | Sci-Fi, Film-Noir

Investigate with the tools until the evidence suffices, then rank all candidates.
"""
OBS = "ALS scores:\n1. [3] F (1995) 1.00\n2. [1] D (1993) 0.42\n3. [2] E (1994) 0.00"


def verdicts(text, observations=()):
    return [(c.text, c.supported) for c in check_text(text, PROMPT, list(observations))]


def test_the_prompt_is_read_as_shown():
    s = shown(PROMPT)
    assert s.history == (
        frozenset({"Comedy", "Romance"}),
        frozenset({"Drama"}),
        frozenset({"Comedy", "Sci-Fi"}),
    )
    assert len(s.candidates) == 3 and s.candidates[2] == frozenset({"Sci-Fi", "Film-Noir"})


def test_history_claims_true_and_false():
    assert verdicts("3 items, mostly Comedy (2/3) then Sci-Fi (1/3)") == [
        ("3 items", True),
        ("Comedy (2/3)", True),
        ("Sci-Fi (1/3)", True),
    ]
    assert verdicts("6 items, mostly Comedy (3/3) then Drama (2/3)") == [
        ("6 items", False),
        ("Comedy (3/3)", False),
        ("Drama (2/3)", False),
    ]


def test_candidate_overlap_claims():
    assert verdicts("2/3 candidates share a genre") == [("2/3 candidates share a genre", True)]
    assert verdicts("3/3 candidates share a genre") == [("3/3 candidates share a genre", False)]


def test_label_values_need_an_earlier_observation():
    assert verdicts("ALS leader [3] 1.00, next [1] 0.42.", [OBS]) == [("[3] 1.00", True), ("[1] 0.42", True)]
    # a value the observation gives another candidate, a value of no observation, and no observation yet
    assert verdicts("[1] 1.00, [2] 0.50", [OBS]) == [("[1] 1.00", False), ("[2] 0.50", False)]
    assert verdicts("ALS leader [3] 1.00") == [("[3] 1.00", False)]


def test_labels_must_exist_and_derived_numbers_are_not_counted():
    assert verdicts("[3] leads by 0.75 sd; [4] is unknown") == [("[3]", True), ("[4]", False)]


def trajectory(first_analysis: str, second_analysis: str) -> Trajectory:
    call = ToolCallRecord(name="cf_scores", arguments={"model": "als"}, observation=OBS, ok=True)
    return Trajectory(
        episode_id="e",
        user_id="u1",
        candidates=["d", "e", "f"],
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": PROMPT}],
        steps=[
            Step(index=0, content="", analyze=first_analysis, plan="cf_scores.", tool_calls=[call]),
            Step(index=1, content="", analyze=second_analysis, plan="Evidence suffices."),
        ],
    )


def test_a_turn_sees_only_the_observations_before_it():
    # turn 1 quotes the ALS value before calling cf_scores: unsupported there, supported in turn 2
    traj = trajectory("[3] 1.00 already?", "ALS leader [3] 1.00")
    assert [[c.supported for c in turn] for turn in trajectory_claims(traj)] == [[False], [True]]
    counts = claim_counts(traj)
    assert counts["claims"] == 2 and counts["claims_supported"] == 1
    assert counts["unsupported_claims"] == ["[3] 1.00 (no observation shows it)"]


def test_the_summary_and_the_page_report_unsupported_claims():
    rows = [
        {"episode_id": "a", "valid": True, **metrics(), "claims": 4, "claims_supported": 3},
        {"episode_id": "b", "valid": True, **metrics(), "claims": 4, "claims_supported": 4},
    ]
    s = summarize_rows(rows)
    assert s["claims"] == 8 and s["claim_support"] == 7 / 8
    events = claim_events(trajectory("6 items", "ALS leader [3] 1.00"))
    assert events == [
        (
            "claims",
            {"turn": 0, "unsupported": [{"text": "6 items", "supported": False, "why": "3 shown of 3"}]},
        )
    ]


def metrics():
    from recthinker.eval.harness import score_rank

    return score_rank(1)
