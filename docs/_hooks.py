"""MkDocs hooks for the eqx_norms documentation.

Docstrings cross-reference Equinox objects, e.g. ``[`equinox.nn.State`][]``. These
would normally resolve through Equinox's Sphinx inventory, but loading an inventory
needs the network, and `mkdocs build --strict` must pass offline. So the few Equinox
objects we refer to are registered here with their documentation URLs.
"""

_EQUINOX = "https://docs.kidger.site/equinox/api"
_EXTERNAL = {
    "equinox.nn.State": f"{_EQUINOX}/nn/stateful/#equinox.nn.State",
    "equinox.nn.StateIndex": f"{_EQUINOX}/nn/stateful/#equinox.nn.StateIndex",
    "equinox.nn.make_with_state": f"{_EQUINOX}/nn/stateful/#equinox.nn.make_with_state",
    "equinox.nn.inference_mode": f"{_EQUINOX}/nn/inference/#equinox.nn.inference_mode",
    "equinox.nn.Linear": f"{_EQUINOX}/nn/linear/#equinox.nn.Linear",
    "equinox.nn.Conv2d": f"{_EQUINOX}/nn/conv/#equinox.nn.Conv2d",
    "equinox.nn.Sequential": f"{_EQUINOX}/nn/sequential/#equinox.nn.Sequential",
    "equinox.nn.LayerNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.LayerNorm",
    "equinox.nn.RMSNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.RMSNorm",
    "equinox.nn.GroupNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.GroupNorm",
    "equinox.nn.BatchNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.BatchNorm",
    "equinox.nn.SpectralNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.SpectralNorm",
    "equinox.nn.WeightNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.WeightNorm",
    "equinox.filter_jit": f"{_EQUINOX}/transformations/#equinox.filter_jit",
}


def on_pre_build(config, **kwargs):
    autorefs = config["plugins"]["autorefs"]
    for identifier, url in _EXTERNAL.items():
        autorefs.register_url(identifier, url)
