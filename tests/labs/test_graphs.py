"""A model exported as data in the sandbox (labs.sandboxed.export_graph) and run by the worker
(labs.trusted.run_graph): the round trip is exact for standard layers, and whatever else a graph
description holds (another operator, too many numbers, references out of order, shapes that would
cost the worker gigabytes) is refused with a message before it runs."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from gpu_runner import outputs
from labs.sandboxed import export_graph
from labs.trusted import MAX_GRAPH_ELEMENTS, CheckFailed, run_graph


def _as_the_worker_reads_it(graph: dict) -> dict:
    """What the worker gets back from the sandbox: torch.save, then the checked reader."""
    buffer = io.BytesIO()
    torch.save(graph, buffer)
    return outputs.load(buffer.getvalue())


def _round_trip(model: nn.Module, batch: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.rand(batch, 64)
    graph = _as_the_worker_reads_it(export_graph(model, torch.zeros(batch, 64)))
    with torch.no_grad():
        return run_graph(graph, x), model(x)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.GELU(), nn.Dropout(0.5), nn.Linear(16, 10))


def _mlp_graph(batch: int = 4) -> dict:
    return _as_the_worker_reads_it(export_graph(_mlp(), torch.zeros(batch, 64)))


def test_a_small_mlp_runs_in_the_worker_exactly_as_in_eager_mode():
    got, want = _round_trip(_mlp())
    assert torch.equal(got, want)


def test_a_small_cnn_with_batch_norm_pooling_and_in_place_relu_round_trips_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding="same"),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10),
        nn.LogSoftmax(dim=1),
    )
    model(torch.rand(50, 64))  # training mode: the running statistics move away from 0 and 1
    got, want = _round_trip(model.eval())
    assert torch.equal(got, want)


def test_tensor_arithmetic_reshapes_and_constants_in_forward_round_trip():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(64, 32), nn.Linear(32, 32)
            self.register_buffer("scale", torch.tensor(0.5))

        def forward(self, x):
            h = torch.relu(self.a(x.float()))
            h = h + self.scale * self.b(h)
            left, right = h.chunk(2, dim=1)
            h = torch.cat([right, left], dim=1).view(-1, 4, 8).transpose(1, 2).reshape(len(x), 32)
            pooled = nn.functional.pad(h.view(-1, 2, 4, 4), (1, 1, 1, 1)).amax(dim=(2, 3)).sum(dim=1, keepdim=True)
            return (h[:, :10] - h.mean(dim=1, keepdim=True)) / 2 + torch.tensor([1.0] * 10) + pooled

    got, want = _round_trip(Residual())
    assert torch.equal(got, want)


def test_the_graph_is_plain_data_and_leaves_the_model_and_inputs_untouched():
    graph = _mlp_graph()
    assert [node["op"] for node in graph["nodes"]] == [
        "aten.linear.default",
        "aten.gelu.default",
        "aten.dropout.default",
        "aten.linear.default",
    ]
    assert graph["inputs"] == [{"name": "input", "shape": [4, 64], "dtype": "float32"}]
    x = torch.rand(4, 64)
    before, tensors = x.clone(), {k: v.clone() for k, v in graph["tensors"].items()}
    run_graph(graph, x)
    assert torch.equal(x, before)
    assert all(torch.equal(graph["tensors"][k], v) for k, v in tensors.items())


def test_an_operator_outside_the_allowlist_is_refused_by_name():
    class Sine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(64, 10)

        def forward(self, x):
            return torch.sin(self.linear(x))

    graph = _as_the_worker_reads_it(export_graph(Sine(), torch.zeros(3, 64)))
    with pytest.raises(CheckFailed, match=r"uses aten\.sin\.default, which the grader does not run: .*standard layers"):
        run_graph(graph, torch.rand(3, 64))


def test_a_lookup_by_sorting_or_indexing_is_refused():
    class Lookup(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("keys", torch.arange(100.0))

        def forward(self, x):
            index = torch.searchsorted(self.keys, x.sum(dim=1))
            return nn.functional.one_hot(index % 10, 10).float()

    graph = _as_the_worker_reads_it(export_graph(Lookup(), torch.zeros(3, 64)))
    with pytest.raises(CheckFailed, match=r"aten\.searchsorted"):
        run_graph(graph, torch.rand(3, 64))


class _Buffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.zeros(600, 10))

    def forward(self, x):
        return x[:, :10] + self.table.sum(dim=0)


class _Constant(nn.Module):
    def forward(self, x):
        return x[:, :10] + torch.tensor([[0.5] * 10] * 600).sum(dim=0)  # a constant written in forward


@pytest.mark.parametrize("model", [nn.Linear(64, 90), _Buffer(), _Constant()], ids=["parameters", "buffer", "constant"])
def test_more_numbers_than_allowed_are_refused_whether_parameters_buffers_or_constants(model):
    graph = _as_the_worker_reads_it(export_graph(model, torch.zeros(2, 64)))
    assert 5_000 < sum(t.numel() for t in graph["tensors"].values()) < 10_000
    run_graph(graph, torch.rand(2, 64))
    with pytest.raises(
        CheckFailed, match=r"holds \d+ numbers in its parameters, buffers and constants, more than 5000"
    ):
        run_graph(graph, torch.rand(2, 64), max_numbers=5_000)


def test_a_graph_exported_for_another_shape_or_in_another_format_is_refused():
    graph = _mlp_graph(batch=4)
    with pytest.raises(CheckFailed, match=r"exported for shape \[4, 64\], not the grader's \[5, 64\]"):
        run_graph(graph, torch.rand(5, 64))
    with pytest.raises(CheckFailed, match="format"):
        run_graph({**graph, "format": "pickle"}, torch.rand(4, 64))
    with pytest.raises(CheckFailed, match="no 'nodes'"):
        run_graph({k: v for k, v in graph.items() if k != "nodes"}, torch.rand(4, 64))


def _hostile(graph: dict, *nodes: dict) -> dict:
    graph = copy.deepcopy(graph)
    graph["nodes"] = [*graph["nodes"], *nodes]
    graph["outputs"] = [{"ref": nodes[-1]["name"]}]
    return graph


def _node(name: str, op: str, *args, **kwargs) -> dict:
    return {"name": name, "op": op, "args": list(args), "kwargs": kwargs}


def test_references_to_unknown_or_later_nodes_and_repeated_names_are_refused():
    graph, x = _mlp_graph(), torch.rand(4, 64)
    unknown = _hostile(graph, _node("bad", "aten.relu.default", {"ref": "nowhere"}))
    with pytest.raises(CheckFailed, match="uses 'nowhere', which is not an input, a tensor or an earlier node"):
        run_graph(unknown, x)
    # a cycle: each node needs the other; in order, the first one's argument does not exist yet
    cycle = _hostile(
        graph, _node("a", "aten.relu.default", {"ref": "b"}), _node("b", "aten.relu.default", {"ref": "a"})
    )
    with pytest.raises(CheckFailed, match="no cycles"):
        run_graph(cycle, x)
    itself = _hostile(graph, _node("me", "aten.relu.default", {"ref": "me"}))
    with pytest.raises(CheckFailed, match="no cycles"):
        run_graph(itself, x)
    twice = _hostile(graph, _node("linear", "aten.relu.default", {"ref": "input"}))
    with pytest.raises(CheckFailed, match="names two values 'linear'"):
        run_graph(twice, x)


def test_shapes_that_would_cost_the_worker_memory_or_time_are_refused_before_running():
    graph, x = _mlp_graph(), torch.rand(4, 64)
    huge_view = _hostile(graph, _node("v", "aten.view.default", {"ref": "input"}, [10**12]))
    with pytest.raises(CheckFailed, match="node 'v'"):
        run_graph(huge_view, x)
    wide = [{"ref": "input"}] * 256  # 4 x 16384 = 65536: allowed; 256 of those would not be
    big = _hostile(
        graph, _node("w", "aten.cat.default", wide, 1), _node("ww", "aten.cat.default", [{"ref": "w"}] * 256)
    )
    with pytest.raises(CheckFailed, match=f"would make a tensor of shape .* more than {MAX_GRAPH_ELEMENTS}"):
        run_graph(big, x)
    # s is 1024 x 4096 (the largest tensor allowed); s @ s.t() would take 4.3 G multiply-adds
    square = [
        _node("c", "aten.cat.default", [{"ref": "input"}] * 64, 1),
        _node("s", "aten.cat.default", [{"ref": "c"}] * 256),
    ]
    product = [_node("st", "aten.t.default", {"ref": "s"}), _node("m", "aten.mm.default", {"ref": "s"}, {"ref": "st"})]
    with pytest.raises(CheckFailed, match="does more than 2e"):
        run_graph(_hostile(graph, *square, *product), x)
    copies = [_node(f"k{i}", "aten.clone.default", {"ref": "s"}) for i in range(12)]
    keep = _node("all", "aten.stack.default", [{"ref": f"k{i}"} for i in range(12)])
    with pytest.raises(CheckFailed, match="keeps more than"):
        run_graph(_hostile(graph, *square, *copies, keep), x)


def test_arguments_the_grader_does_not_know_and_training_mode_are_refused():
    graph, x = _mlp_graph(), torch.rand(4, 64)
    code = _hostile(graph, _node("e", "aten.relu.default", {"ref": "input", "extra": "__import__('os')"}))
    with pytest.raises(CheckFailed, match="an argument the grader does not accept"):
        run_graph(code, x)
    deep = _hostile(graph, _node("d", "aten.cat.default", [[[[{"ref": "input"}]]]]))
    with pytest.raises(CheckFailed, match="nested more than"):
        run_graph(deep, x)
    dropout = _hostile(graph, _node("t", "aten.dropout.default", {"ref": "input"}, 0.5, True))
    with pytest.raises(CheckFailed, match="training mode"):
        run_graph(dropout, x)
    to_int = _hostile(graph, _node("i", "aten.to.dtype", {"ref": "input"}, {"dtype": "int64"}))
    with pytest.raises(CheckFailed, match="float32 or float64"):
        run_graph(to_int, x)
    wrong_arity = _hostile(graph, _node("r", "aten.linear.default", {"ref": "input"}))
    with pytest.raises(CheckFailed, match=r"node 'r' \(aten.linear.default\) failed"):
        run_graph(wrong_arity, x)
