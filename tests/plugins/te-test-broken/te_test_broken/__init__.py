"""Plugins that break the contract in different ways."""


def not_a_spec():
    return {"name": "oops"}  # a dict, not a BackboneSpec
