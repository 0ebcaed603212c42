"""The reference scores of the 26 Atari 100k games and the human-normalised score built on them.

Games are named as envpool names them, without the version suffix (`Pong` for `Pong-v5`, `KungFuMaster`, `UpNDown`).
"""

from typing import NamedTuple


class ReferenceScores(NamedTuple):
    """A game's mean episode return of a uniformly random policy and of a professional human tester."""

    random: float
    human: float


# The standard random and human scores that Atari 100k results are normalised with (SimPLe, Kaiser et al. 2019;
# DreamerV3, Hafner et al. 2023): the random policy's from the DQN Nature paper (Mnih et al. 2015), the human
# tester's as the DQN follow-ups re-reported them for up to 30 no-op starts (van Hasselt et al. 2016; Wang et al.
# 2016), both with episodes capped at 108,000 frames. Checked against two public tables that agree on every number here:
# google-deepmind/dqn_zoo (dqn_zoo/atari_data.py) and eloialonso/iris (results/data/RANDOM.json, HUMAN.json).
REFERENCE_SCORES: dict[str, ReferenceScores] = {
    "Alien": ReferenceScores(random=227.8, human=7127.7),
    "Amidar": ReferenceScores(random=5.8, human=1719.5),
    "Assault": ReferenceScores(random=222.4, human=742.0),
    "Asterix": ReferenceScores(random=210.0, human=8503.3),
    "BankHeist": ReferenceScores(random=14.2, human=753.1),
    "BattleZone": ReferenceScores(random=2360.0, human=37187.5),
    "Boxing": ReferenceScores(random=0.1, human=12.1),
    "Breakout": ReferenceScores(random=1.7, human=30.5),
    "ChopperCommand": ReferenceScores(random=811.0, human=7387.8),
    "CrazyClimber": ReferenceScores(random=10780.5, human=35829.4),
    "DemonAttack": ReferenceScores(random=152.1, human=1971.0),
    "Freeway": ReferenceScores(random=0.0, human=29.6),
    "Frostbite": ReferenceScores(random=65.2, human=4334.7),
    "Gopher": ReferenceScores(random=257.6, human=2412.5),
    "Hero": ReferenceScores(random=1027.0, human=30826.4),
    "Jamesbond": ReferenceScores(random=29.0, human=302.8),
    "Kangaroo": ReferenceScores(random=52.0, human=3035.0),
    "Krull": ReferenceScores(random=1598.0, human=2665.5),
    "KungFuMaster": ReferenceScores(random=258.5, human=22736.3),
    "MsPacman": ReferenceScores(random=307.3, human=6951.6),
    "Pong": ReferenceScores(random=-20.7, human=14.6),
    "PrivateEye": ReferenceScores(random=24.9, human=69571.3),
    "Qbert": ReferenceScores(random=163.9, human=13455.0),
    "RoadRunner": ReferenceScores(random=11.5, human=7845.0),
    "Seaquest": ReferenceScores(random=68.4, human=42054.7),
    "UpNDown": ReferenceScores(random=533.4, human=11693.2),
}

ATARI100K_GAMES: tuple[str, ...] = tuple(REFERENCE_SCORES)


def reference_scores(game: str) -> ReferenceScores:
    """The game's random and human scores; ValueError naming the known games for any other name."""
    try:
        return REFERENCE_SCORES[game]
    except KeyError:
        raise ValueError(f"no reference scores for Atari game {game!r}; the Atari 100k games are "
                         f"{', '.join(ATARI100K_GAMES)}") from None


def human_normalized(game: str, score: float) -> float:
    """`score` on the scale where the random policy scores 0 and the human tester 1:
    (score - random) / (human - random)."""
    random, human = reference_scores(game)
    return (score - random) / (human - random)
