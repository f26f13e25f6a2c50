"""The autodiff lab's trusted references and messages, without the sandbox.

The shipped solutions prove the grader end to end (``lab check``); these pin down that the
references a student is held to are right: the central differences agree with exact adjoints far
inside the 1e-6 tolerance, the topological-order reference is the recursive definition the README
gives, the chain's reference gradients are torch autograd's, a wrong adjoint is explained as the
README says, and the timed case's calls (run.py's ``timed``) are checked against those references.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys

import numpy as np
import pytest
import torch

from labs.catalog import find_lab
from labs.trusted import CheckFailed

LAB = find_lab("autodiff")
GRADER = LAB.load_grader()


def _module(path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN = _module(LAB.run_module, "autodiff_lab_run")
CORRECT = _module(LAB.path / "solutions" / "correct" / "autodiff.py", "autodiff_correct")
PROGRAMS = (
    "_grad_elementwise",
    "_grad_unary",
    "_grad_matmul_reshape_transpose",
    "_grad_broadcast_sum",
    "_shared_nodes",
)


def _torch_apply(node: list, values: list[torch.Tensor]) -> torch.Tensor:
    """A program node in torch, independent of the grader's numpy evaluator."""
    op, a = node[0], values[node[1]]
    if op in GRADER.BINARY:
        return {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "matmul": torch.matmul}[op](
            a, values[node[2]]
        )
    c = node[2] if len(node) > 2 else None
    forms = {
        "add_scalar": lambda: a + c,
        "radd_scalar": lambda: c + a,
        "sub_scalar": lambda: a - c,
        "rsub_scalar": lambda: c - a,
        "mul_scalar": lambda: a * c,
        "rmul_scalar": lambda: c * a,
        "div_scalar": lambda: a / c,
        "rdiv_scalar": lambda: c / a,
        "neg": lambda: -a,
        "pow": lambda: a**c,
        "exp": lambda: torch.exp(a),
        "log": lambda: torch.log(a),
        "relu": lambda: torch.relu(a),
        "sin": lambda: torch.sin(a),
        "sum": lambda: a.sum() if c is None else a.sum(dim=c),
        "broadcast_to": lambda: a.broadcast_to(c),
        "reshape": lambda: a.reshape(c),
        "transpose": lambda: a.permute(*(c if c is not None else range(a.dim() - 1, -1, -1))),
    }
    return forms[op]()


def _exact_adjoints(inputs: dict) -> list[torch.Tensor]:
    values = []
    for node in inputs["nodes"]:
        value = inputs["leaves"][node[1]].clone().requires_grad_() if node[0] == "leaf" else _torch_apply(node, values)
        value.retain_grad()
        values.append(value)
    out_grad = inputs["out_grad"] if inputs["out_grad"] is not None else torch.ones_like(values[-1])
    values[-1].backward(out_grad)
    return [v.grad for v in values]


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("builder", PROGRAMS)
def test_central_differences_agree_with_exact_adjoints_far_inside_the_tolerance(builder, seed):
    case = getattr(GRADER, builder)(np.random.default_rng(seed))
    exact = _exact_adjoints(case["inputs"])
    assert case["expected_grads"], "every gradient case checks some nodes"
    for index, reference in case["expected_grads"].items():
        error = ((reference - exact[index]).abs() / (1 + exact[index].abs())).max().item()
        assert error < 1e-7, (builder, case["inputs"]["labels"][index], error)  # the check allows 1e-6


def _recursive_topo(nodes: list, roots: list[int]) -> list[int]:
    order, visited = [], set()

    def visit(k: int) -> None:
        if k in visited:
            return
        visited.add(k)
        for parent in GRADER._node_args(nodes[k]):
            visit(parent)
        order.append(k)

    for root in roots:
        visit(root)
    return order


def test_topological_order_reference_is_the_readmes_recursive_definition():
    case = GRADER._topo_order(np.random.default_rng(3))
    for graph, expected in zip(case["inputs"]["graphs"], case["expected"], strict=True):
        assert expected == _recursive_topo(graph["nodes"], graph["roots"])
    # The README's worked example: c = a * b; d = c + a; e = d.exp().
    nodes = [["leaf", 0], ["leaf", 1], ["mul", 0, 1], ["add", 2, 0], ["exp", 3]]
    assert GRADER._topo_sorted(nodes, [4]) == [0, 1, 2, 3, 4]
    assert GRADER._topo_sorted(nodes, [2, 4]) == [0, 1, 2, 3, 4]
    assert GRADER._topo_sorted(nodes, [1, 4]) == [1, 0, 2, 3, 4]


def test_chain_references_match_torch_autograd(monkeypatch):
    monkeypatch.setattr(GRADER, "CHAIN_OPS", 400)
    sent = GRADER._chain_inputs(np.random.default_rng(0), 400)
    kept = GRADER._chain_reference(sent, 400)
    leaves = [sent[k].clone().requires_grad_() for k in ("x", "w", "c")]
    x, w, c = leaves
    nodes, v = [x, w, c], x
    for k in range(400):
        v = (lambda u: u * w, torch.exp, torch.log, lambda u: u + c)[k % 4](v)
        v.retain_grad()
        nodes.append(v)
    v.backward(sent["out_grad"])
    for key, leaf in zip(("x", "w", "c"), leaves, strict=True):
        torch.testing.assert_close(kept[key], leaf.grad, rtol=1e-12, atol=1e-12)
    for node, reference in zip(sent["samples"], kept["samples"], strict=True):
        torch.testing.assert_close(reference, nodes[node].grad, rtol=1e-12, atol=1e-12)
    chain = [["leaf", 0], ["leaf", 1], ["leaf", 2]]
    for k in range(400):
        v = 0 if k == 0 else len(chain) - 1
        chain.append((["mul", v, 1], ["exp", v], ["log", v], ["add", v, 2])[k % 4])
    order = GRADER._chain_order()  # with CHAIN_OPS patched to 400, like run()'s chain of that length
    assert order == _recursive_topo(chain, [len(chain) - 1])
    assert order[:7] == [0, 1, 3, 4, 5, 2, 6]  # x, w, x * w, exp, log, c, + c


def test_forward_mode_references():
    case = GRADER._forward_mode(np.random.default_rng(1))
    program = case["inputs"]["program"]
    leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in program["point"]]
    values = []
    for node in program["nodes"]:
        values.append(leaves[node[1]] if node[0] == "leaf" else _torch_apply(node, values))
    values[-1].backward()
    directional = sum(leaf.grad.item() * t for leaf, t in zip(leaves, program["tangent"], strict=True))
    value, tangent = case["expected_program"]
    assert value == pytest.approx(values[-1].item(), rel=1e-14)
    assert tangent == pytest.approx(directional, rel=1e-9, abs=1e-9)


def _broadcast_case() -> tuple[dict, dict]:
    case = GRADER._grad_broadcast_sum(np.random.default_rng(0))
    inputs = case["inputs"]
    output = {
        "values": list(case["expected_values"]),
        "grads": [case["expected_grads"].get(k) for k in range(len(inputs["nodes"]))],
    }
    return case, output


def test_a_wrong_adjoint_is_blamed_on_the_operations_that_use_the_node():
    case, output = _broadcast_case()
    output["grads"][0] = torch.zeros(3, 4, dtype=torch.float64)  # x0 is (3, 1): not summed back
    with pytest.raises(CheckFailed) as failure:
        GRADER.check(case, output)
    message = str(failure.value)
    assert message.startswith("grad of x0: shape (3, 4), expected (3, 1)")
    assert "`v4 = x0 + x1`" in message and "x0 is used 3 times" in message
    assert "sum it over the axes that broadcasting added or stretched" in message


def test_a_wrong_type_or_dtype_is_named():
    case, output = _broadcast_case()
    output["grads"][5] = "torch.Tensor"
    with pytest.raises(CheckFailed, match=r"grad of v5: \.grad is a torch\.Tensor, expected a numpy\.ndarray"):
        GRADER.check(case, output)
    case, output = _broadcast_case()
    output["values"][2] = output["values"][2].float()
    with pytest.raises(CheckFailed, match="dtype float32, expected float64"):
        GRADER.check(case, output)


class _Harness:
    """What run.py asks of the harness: the original of a patched function."""

    @staticmethod
    def original(name: str):
        assert name == "sys.setrecursionlimit"
        return sys.setrecursionlimit


def _timed_case(n_ops: int, calls: int) -> dict:
    """The benchmark case as the worker hands it to check(): ``calls`` calls' inputs and probes."""
    case = GRADER.cases(5)[-1]
    case["inputs"] = {**case["inputs"], "n_ops": n_ops}
    gen = torch.Generator().manual_seed(0)
    probes = {
        name: torch.randn(shape, generator=gen, dtype=torch.float64) for name, shape in case["timed"]["outputs"].items()
    }
    inputs = [GRADER.call_inputs(case, seed) for seed in range(calls)]
    case["runtime"] = {
        "seconds": [0.05, 0.07, 0.06][:calls],
        "reference_seconds": None,
        "inputs": inputs,
        "probes": probes,
        "frozen": False,
    }
    return case


def _fingerprint(outputs: dict, probes: dict) -> dict:
    """What the harness replies for one call (gpu_runner/harness.py, ``_fingerprint``)."""
    return {
        name: float(torch.dot(torch.as_tensor(outputs[name]).reshape(-1).to(probe.dtype), probe.reshape(-1)))
        for name, probe in probes.items()
    }


def test_timed_calls_of_the_correct_solution_pass_and_the_metric_is_the_workers_median():
    case = _timed_case(400, 3)
    runtime = case["runtime"]
    calls = []
    for inputs in runtime["inputs"]:
        outputs = RUN.timed(CORRECT, {**case["inputs"], **inputs}, _Harness())
        assert set(outputs) == set(case["timed"]["outputs"])
        assert all(type(v) is np.ndarray and list(v.shape) == case["timed"]["outputs"][k] for k, v in outputs.items())
        calls.append(_fingerprint(outputs, runtime["probes"]))
    verdict = GRADER.check(case, {"calls": calls})
    assert verdict["metric"] == pytest.approx(statistics.median(runtime["seconds"]) * 1e3)
    assert "400-operation chain" in verdict["message"]


def test_a_timed_call_that_reuses_an_earlier_chains_gradients_is_rejected():
    case = _timed_case(400, 3)
    runtime = case["runtime"]
    first = RUN.timed(CORRECT, {**case["inputs"], **runtime["inputs"][0]}, _Harness())
    calls = [_fingerprint(first, runtime["probes"])] * 3
    with pytest.raises(CheckFailed, match=r"timed chain 2 of 3 returned a wrong 'x'"):
        GRADER.check(case, {"calls": calls})


def test_every_timed_call_gets_its_own_chain_from_its_seed():
    case = GRADER.cases(5)[-1]
    a, b, again = (GRADER.call_inputs(case, seed) for seed in (1, 2, 1))
    assert not torch.equal(a["x"], b["x"]) and a["samples"] != b["samples"]
    assert torch.equal(a["x"], again["x"]) and a["samples"] == again["samples"]
    assert all(3 <= node < 3 + GRADER.CHAIN_OPS for node in a["samples"])
