"""One module per book experiment: get_config(variant) + build(config, info) -> Task."""
