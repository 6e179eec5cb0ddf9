"""Small bundled example models (deterministic weights, no downloads) for the demo, docs and tests.

``accelserve.examples.models`` imports torch; this package itself does not.
"""

from __future__ import annotations

from accelserve.specs import InputSpec

#: example name -> (``MODULE:FN`` of its factory, input specs for ``--input``)
EXAMPLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "small_cnn": ("accelserve.examples.models:small_cnn", ("input:1x3x32x32:float32",)),
    "tiny_encoder": ("accelserve.examples.models:tiny_encoder", ("input_ids:2xseq=16:int64",)),
}


def example_input_specs(name: str) -> list[InputSpec]:
    """The input specs of a bundled example (``small_cnn`` or ``tiny_encoder``)."""
    from accelserve.errors import InvalidInputError

    try:
        _, specs = EXAMPLES[name]
    except KeyError:
        raise InvalidInputError(f"no bundled example named '{name}'", hint=f"examples: {', '.join(EXAMPLES)}") from None
    return [InputSpec.parse(s) for s in specs]


__all__ = ["EXAMPLES", "example_input_specs"]
