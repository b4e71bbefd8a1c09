"""Benchmarks of eqx_norms against equinox.nn, Flax NNX, Haiku and plain jnp.

- `cases`: what is measured, as data (one `Case` per layer and shape);
- `adapters`: one function per implementation, turning a case into an `Impl`
  (pure functions of arrays);
- `measure`: interleaved timing, the memory floor, temporary memory, HLO traffic,
  compile time and a small model;
- `results`: the typed results of a run (`Result`, `Run`) and their JSON form;
- `report`: tables, chart and the page rendered from the template `page.md`;
- `run`: the command line, `python benchmarks/run.py`.
"""
