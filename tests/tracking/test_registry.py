"""The registry (stpipe.tracking.registry): the promotion rule, and the aliases that follow
the decisions on versions that carry them."""

from __future__ import annotations

import pytest

from stpipe.core.errors import TrackingError
from stpipe.tracking import registry
from stpipe.tracking.client import Tracking


@pytest.mark.parametrize(
    ("candidate", "champion", "alias", "reason"),
    [
        (2.0, None, "champion", "no champion yet"),
        (1.0, 2.0, "champion", "better than v1"),
        (3.0, 2.0, "challenger", "not better than v1"),
        (2.0, 2.0, "challenger", "tie with v1, which stays champion"),
        (float("nan"), None, "challenger", "not finite"),
        (1.0, float("nan"), "champion", "better than v1"),
    ],
)
def test_promotion_rule(candidate, champion, alias, reason) -> None:
    decision = registry.decide(
        metric="rmse_wmean",
        candidate_score=candidate,
        champion_version=None if champion is None else "1",
        champion_score=champion,
    )
    assert decision.alias == alias
    assert reason in decision.reason


def test_aliases_follow_the_decisions_and_versions_carry_them(tracking: Tracking, logged) -> None:
    run_id, info = logged
    with pytest.raises(TrackingError, match="has no champion yet; run `stpipe train CONFIG`"):
        registry.require_champion(tracking)

    def register(score: float) -> str:
        current = registry.champion(tracking)
        decision = registry.decide(
            metric="rmse_wmean",
            candidate_score=score,
            champion_version=None if current is None else str(current.version),
            champion_score=None
            if current is None
            else float(current.tags["stpipe.candidate_score"]),
        )
        version = registry.register(
            tracking,
            model_id=info.model_id,
            run_id=run_id,
            promotion=decision,
            tags={"stpipe.note": f"{score}"},
        )
        return str(version.version)

    first = register(2.0)
    assert registry.aliases(tracking) == {"champion": first}
    worse = register(3.0)
    assert registry.aliases(tracking) == {"champion": first, "challenger": worse}
    tie = register(2.0)
    assert registry.aliases(tracking) == {"champion": first, "challenger": tie}
    better = register(1.5)
    assert registry.aliases(tracking) == {"champion": better, "challenger": tie}

    tags = tracking.client.get_model_version(tracking.model_name, better).tags
    assert tags["stpipe.decision"] == "champion"
    assert float(tags["stpipe.candidate_score"]) == 1.5
    assert float(tags["stpipe.champion_score"]) == 2.0
    assert tags["stpipe.champion_version"] == first
    assert tags["stpipe.note"] == "1.5"
    assert [str(v.version) for v in registry.versions(tracking)] == [better, tie, worse, first]
