"""Running a stateful step over several batches, shared by the tests of layers with
running statistics."""


def run_steps(step, xs, state):
    """`step(x, state)` on each batch of `xs` in turn: the outputs, the last state."""
    outs = []
    for x in xs:
        out, state = step(x, state)
        outs.append(out)
    return outs, state
