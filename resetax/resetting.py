"""Placeholder: the stochastic resetting transformation is being written on main."""

ModelStateCheckpoint = ResettingState = None


def _todo(*args, **kwargs):
    raise NotImplementedError


apply_updates = find_resetting_state = init_model_state_checkpoint = _todo
reset_model_state = set_checkpoint = stochastic_resetting = _todo
