"""Defenses: the dialogue safety moderator, guard baselines, the policy library,
defense evaluation and the guard proxy."""

from mmsafe.defense.defenses import (
    DefendedClient,
    Defense,
    InputGuardDefense,
    KeywordFilterDefense,
    ModeratorDefense,
    OutputGuardDefense,
    SystemPromptDefense,
    make_defense,
)
from mmsafe.defense.moderator import (
    GuardModerator,
    LLMModerator,
    Moderation,
    Moderator,
    OfflineModerator,
    PolicyLibrary,
    make_moderator,
)

__all__ = ["DefendedClient", "Defense", "GuardModerator", "InputGuardDefense", "KeywordFilterDefense", "LLMModerator",
           "Moderation", "Moderator", "ModeratorDefense", "OfflineModerator", "OutputGuardDefense", "PolicyLibrary",
           "SystemPromptDefense", "make_defense", "make_moderator"]
