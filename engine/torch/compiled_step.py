"""The whole decode step compiled: each decoder layer one Inductor graph, float32 throughout.

Op by op, a decode step of the bench model is some 400 small ops and 444 bf16 <-> float32
conversions (norms, RoPE, attention, router, residual adds) around the weight reads, each a
dispatch and a thread-pool wake-up. Compiled as gpt-fast compiles its decode step, a layer's
glue fuses into a few C++ loops, and float32 activations end to end remove the conversions
(the KV cache keeps the model's dtype). A layer enters its graph as constants (kinds, head
counts, routing settings) and a flat list of tensors, so one graph serves every layer of a
kind, and the cache's capacity is a dynamic dimension: a model compiles two or three graphs,
at load; each is compiled ahead (`aot_compile`) and its code called without Dynamo's
per-call guard checks (Graphs). When every expert is resident, the chosen experts are
gathered from the cache's slots inside the graph (compiled.py's kernel; for int4,
int4_kernel.py's experts op, the very operator the MoE block calls), sorted and summed as
the MoE block sums them, so the bits do not depend on the budget; otherwise the MoE block's
own path runs.
Outside Inductor, as opaque operators:
- `itamae_int8::matvec`: int8_kernel.py's VNNI kernel on the stored int8 rows (bf16 models,
  as the eager path runs it): the head, q/k/v as one product, o, dense and shared MLPs, and
  the routed experts gathered in the graph (compiled.py's routed_int8_vnni).
- `itamae::int8_linear`: FBGEMM's int8 product (cpu_kernels.py) where that kernel is not
  available. Inductor's own int8 reduction measured 0.5-0.6x FBGEMM on the 151,936-row
  output layer and on 1024x1024 (2 threads: one accumulator per row, no VNNI).
- `itamae::routed_experts`: the MoE block's decode path (placement, misses, usage counts),
  for budgets that leave experts on the slow tier: outputs stay placement-independent.
- `itamae_attn::scores` / `mix`: attention's two products over a bf16 cache read as stored
  (kv_attention.py): Inductor lowered `past_k.float()` to a float32 copy of the cache's
  whole capacity before its matmul, every step (32 MB a layer at 16k for the bench model).
The KV cache is written outside the graph: attention reads its whole buffers (the unused
positions masked) and the new key on its own. Eligible: GQA layers without sinks, window,
output gate or clipping (MLA, linear attention, gpt-oss decode op by op), CPU, one sequence.
"""

from __future__ import annotations

import functools
import time
import warnings
import weakref

import torch
import torch.nn.functional as F

from . import kv_attention
from .attention import GQAttention
from .compiled import _ACTS, _ARGS, _KERNELS, weighted_sum
from .layers import ACTIVATIONS, GatedMLP, Int4Linear, Int8Linear, Linear
from .moe import MoEBlock, route
from .step_ops import _BLOCKS, _LINEARS

# The chosen experts gathered inside the graph when all are resident, instead of the MoE
# block's Python path (placement, misses, usage counts: some 20 small ops a layer).
GATHER_IN_GRAPH = True

# ---- the traced layer ------------------------------------------------------------------------
# A layer reaches the graph as constants C (kinds, head counts, routing settings: the graph
# keys on them) and tensors T by name (graph inputs): layers of one kind share one graph.


def _linear(C, T, name: str, x: torch.Tensor) -> torch.Tensor:
    """x [1, in] float32 -> [1, out] float32 through the linear stored under `name`."""
    kind, w = C[name], T[name + ".w"]
    if kind == "int8":
        y = torch.ops.itamae.int8_linear(x, w, T[name + ".s"], C["fbgemm"])
    elif kind == "int8_vnni":  # int8_kernel.py's decode kernel on the stored rows
        zero = torch.zeros(1, dtype=torch.long, device=x.device)
        y = torch.ops.itamae_int8.matvec(x.contiguous(), w[None], T[name + ".s"][None], zero)
    elif kind == "int4_vnni":  # int4_kernel.py's decode kernel on the stored nibbles
        zero = torch.zeros(1, dtype=torch.long, device=x.device)
        y = torch.ops.itamae_int4.matvec(x.contiguous(), w[None], T[name + ".s"][None],
                                         T[name + ".z"][None], zero)  # fmt: skip
    elif kind[0] == "int4":
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), w, kind[1], T[name + ".s"])
        y = y.float()
    else:
        y = F.linear(x.to(w.dtype), w).float()
    bias = T.get(name + ".b")
    return y if bias is None else y + bias.float()


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight.float() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dim: int, interleaved: bool):
    """x [heads, D] float32; cos/sin [1, R] (or [1, R/2] interleaved) float32 (rope.py)."""
    rot, rest = x[..., :dim], x[..., dim:]
    if interleaved:
        even, odd = rot[..., 0::2], rot[..., 1::2]
        out = torch.cat([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    else:
        half = rot.shape[-1] // 2
        out = rot * cos + torch.cat((-rot[..., half:], rot[..., :half]), dim=-1) * sin
    return out if rest.shape[-1] == 0 else torch.cat([out, rest], dim=-1)


def _attention(C, T, x, past_k, past_v, length, cos, sin):
    """x [1, H] float32; past_k/v [1, Hkv, capacity, D]: the cache's whole buffers (contiguous,
    so a grown cache is the same graph), of which `length` (0-d) positions hold keys ->
    (out [1, H] float32, k and v [1, Hkv, 1, D] in the cache's dtype, for the cache)."""
    hq, hkv, d, qk_norm, eps, rot_dim, interleaved = C["attn"]
    if "qkv" in C:  # q, k and v as one product (one FBGEMM call instead of three)
        q, k, v = _linear(C, T, "qkv", x).split([hq * d, hkv * d, hkv * d], dim=-1)
    else:
        q, k, v = (_linear(C, T, name, x) for name in ("q", "k", "v"))
    if qk_norm == "proj":
        q, k = _rms(q, T["q_norm"], eps), _rms(k, T["k_norm"], eps)
    q, k, v = q.reshape(hq, d), k.reshape(hkv, d), v.reshape(hkv, d)
    if qk_norm == "head":
        q, k = _rms(q, T["q_norm"], eps), _rms(k, T["k_norm"], eps)
    q, k = _rope(q, cos, sin, rot_dim, interleaved), _rope(k, cos, sin, rot_dim, interleaved)
    k, v = k.to(past_k.dtype), v.to(past_v.dtype)  # as the cache keeps them
    grouped = q.view(hkv, hq // hkv, d)  # query heads sharing a KV head as rows
    kf, vf = k.float(), v.float()
    in_place = C["kv_kernel"] and kv_attention.fits(past_k)  # bf16: read as stored
    if in_place:  # kv_attention.py: no float32 copy of the cache's capacity per step
        past_scores = kv_attention.scores(grouped, past_k[0], length)  # [Hkv, G, capacity]
    else:
        past_scores = grouped @ past_k[0].float().transpose(-1, -2)
    unused = torch.arange(past_k.shape[2]) >= length
    past_scores = past_scores.masked_fill(unused, float("-inf"))
    scores = torch.cat([past_scores, (grouped * kf[:, None]).sum(-1, True)], dim=-1) * d**-0.5
    probs = scores.softmax(dim=-1)
    past = kv_attention.mix(probs[..., :-1], past_v[0], length) if in_place else (
        probs[..., :-1] @ past_v[0].float())  # fmt: skip
    out = past + probs[..., -1:] * vf[:, None]  # [Hkv, G, D]
    out = _linear(C, T, "o", out.reshape(1, hq * d))
    return out, k.view(1, hkv, 1, d), v.view(1, hkv, 1, d)


def _mlp(C, T, prefix: str, x) -> torch.Tensor:
    gate, up = _linear(C, T, prefix + "gate", x), _linear(C, T, prefix + "up", x)
    return _linear(C, T, prefix + "down", ACTIVATIONS[C[prefix + "act"]](gate) * up)


def _moe(C, T, h, block):
    """-> (out [1, H] float32, the chosen experts [1, K])."""
    weights, experts = route(h, C["top_k"], T["router.w"], T.get("router.b"),
                             T.get("router.cb"), C["route"])  # fmt: skip
    if C["experts"] is None:  # the block's own path: the expert cache decides where
        out = torch.ops.itamae.routed_experts(h, weights, experts, block)
    else:  # every expert resident: gathered from the slots by the routing result
        scheme, act = C["experts"]
        rows = [T["experts." + n] for n in _ARGS[scheme]]
        # in ascending expert order and summed as MoEBlock._fused sums: the same bits as
        # the block's path that partial budgets take (placement invariance)
        chosen, order = experts[0].sort()
        if scheme == "int4_group":  # int4_kernel.py's C++ op, as the block's path calls it
            y = torch.ops.itamae_int4.experts(h.contiguous(), *rows, T["slots"][chosen], act)
        else:
            y = _KERNELS[scheme](h.reshape(-1), *rows, T["slots"][chosen], _ACTS[act])
        out = weighted_sum(weights[0][order], y)
    if C["shared"]:
        shared = _mlp(C, T, "shared.", h)
        if "shared_gate" in C:
            shared = torch.sigmoid(_linear(C, T, "shared_gate", h)) * shared
        out = out + shared
    return out, experts


def _layer_fn(consts: tuple, names: tuple):
    C = dict(consts)

    def layer_step(x, past_k, past_v, length, cos, sin, block, *tensors):
        """One decoder layer for one token: x [1, H] float32 -> (x, new k, new v, experts)."""
        T = dict(zip(names, tensors, strict=True))
        h = _rms(x, T["input_norm"], C["eps"])
        attn, k, v = _attention(C, T, h, past_k, past_v, length, cos, sin)
        x = x + attn
        h = _rms(x, T["post_norm"], C["eps"])
        if C["ffn"] == "mlp":
            return x + _mlp(C, T, "mlp.", h), k, v, None
        out, experts = _moe(C, T, h, block)
        return x + out, k, v, experts

    return layer_step


class Graphs:
    """A traced function's graphs, compiled ahead of their calls (torch.compile's
    `aot_compile`) and called without Dynamo. Through torch.compile every call pays
    Dynamo's cache lookup, its guards checked over all inputs (a layer's 20-odd tensors),
    13 calls a token: calling the compiled code directly measured 70 us less a layer (620 ->
    551 us, 2 threads, one process, best of 6 rotated rounds). The same guards still decide
    which graph serves which inputs, only checked where an input can have changed: `find`
    runs them when a layer's plan is made and when its KV buffers are new (a grown or a new
    cache); between those, a call's inputs are the plan's own tensors and ones the step makes
    in fixed shapes and dtypes (DecodeStep), under the inference mode forward runs in."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled: list = []  # AOTCompiledFunction, one per set of guards
        self.compiles = 0  # graphs compiled (tests: none after load)

    def find(self, args: tuple):
        """The compiled code whose guards accept `args` (compiled now if none does)."""
        for graph in self.compiled:
            if graph.guard_check(*args):
                return graph.fn
        from .compiled import setup_inductor

        setup_inductor()
        try:
            with torch._inductor.config.patch(STEP_INDUCTOR):
                graph = self._compile(args)
        except Exception:  # an op the C++ wrapper cannot call: Inductor's defaults
            graph = self._compile(args)
        self.compiled.append(graph)
        self.compiles += 1
        return graph.fn

    def _compile(self, args: tuple):
        compiled = torch.compile(self.fn, dynamic=False, fullgraph=True)
        return compiled.aot_compile((args, {}))  # the FX graph cache on disk still serves it


# Inductor's settings for the step's graphs. Its Python wrapper around a layer's kernels ran
# some 60 calls besides them (32 checks of inputs' and outputs' sizes and strides, 22 buffer
# allocations), 13 graphs a token: with the checks off and the wrapper generated as C++, the
# int4 bench model's step took 5.3 ms against 5.7 (median of 200 steps, 4 rotated rounds of
# separate processes, 2 threads; profile_decode.py). The checks are redundant here: the
# guards (`find`) decide which graph serves which inputs, and the step's own tensors keep
# their shapes and dtypes between those checks. Each alone gained about half of it.
STEP_INDUCTOR = {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False,
                 "cpp_wrapper": True}  # fmt: skip


@functools.cache
def _layer_graphs(consts: tuple, names: tuple) -> Graphs:
    return Graphs(_layer_fn(consts, names))


def head_step(x, norm: torch.Tensor, eps: float, kind, w, s, fbgemm: bool, z=None):
    C, T = {"head": kind, "fbgemm": fbgemm}, {"head.w": w, "head.s": s, "head.z": z}
    return _linear(C, T, "head", _rms(x, norm, eps))


HEAD_GRAPHS = Graphs(head_step)


# ---- a layer's constants and tensors ------------------------------------------------------


def _add_linear(C: dict, T: dict, name: str, lin: Linear) -> None:
    if isinstance(lin, Int8Linear) and C["fbgemm"] and lin.decode_kernel_applies():
        C[name], T[name + ".w"], T[name + ".s"] = "int8_vnni", lin.weight, lin.scale
    elif isinstance(lin, Int8Linear):
        C[name], T[name + ".w"], T[name + ".s"] = "int8", lin.weight, lin.scale
        _LINEARS[lin.weight.data_ptr()] = weakref.ref(lin)
    elif isinstance(lin, Int4Linear) and lin.decode_kernel_applies():
        C[name], T[name + ".w"], T[name + ".s"], T[name + ".z"] = ("int4_vnni", lin.packed,
                                                                   lin.scale, lin.zero)  # fmt: skip
    elif isinstance(lin, Int4Linear):
        packed, sz = lin._kernel
        C[name], T[name + ".w"], T[name + ".s"] = ("int4", lin.group), packed, sz
    else:
        C[name], T[name + ".w"] = "float", lin.weight
    if lin.bias is not None:
        T[name + ".b"] = lin.bias


def _fused_qkv(a: GQAttention) -> Int8Linear | Int4Linear | None:
    """q, k and v stacked into one int8 or int4 linear (per-row scales, per-row groups: the
    same products)."""
    parts = (a.q, a.k, a.v)
    bias = None
    if any(p.bias is not None for p in parts):
        bias = torch.cat([p.bias.float() if p.bias is not None else
                          torch.zeros(p.out_features) for p in parts])  # fmt: skip
    if all(isinstance(p, Int4Linear) for p in parts):
        # the kernel's shapes are the parts' (one input size); no stacked copy where it does not run
        if len({p.group for p in parts}) > 1 or not all(p.decode_kernel_applies() for p in parts):
            return None
        return Int4Linear(*(torch.cat([getattr(p, t) for p in parts])
                            for t in ("packed", "scale", "zero")), parts[0].group, bias)  # fmt: skip
    if not all(isinstance(p, Int8Linear) for p in parts):
        return None
    fused = Int8Linear(torch.cat([p.weight for p in parts]), torch.cat([p.scale for p in parts]),
                       bias)  # fmt: skip
    if not (parts[0].prepared and fused.prepare_kernel()):
        fused.weight = fused.weight.clone()  # 64-byte aligned for the weight-only kernels
    return fused


def _layer_params(step, i: int, layer) -> tuple[tuple, tuple, list]:
    a, ffn, model = layer.attn, layer.ffn, step.model
    qk_norm = None if a.q_norm is None else ("head" if a.qk_norm_per_head else "proj")
    C = {"eps": layer.eps, "fbgemm": step.fbgemm, "kv_kernel": model.dtype == torch.bfloat16
         and kv_attention.READ_IN_PLACE and kv_attention.available(),
         "attn": (a.n_heads, a.n_kv_heads, a.head_dim, qk_norm, a.eps, model.rotary.rotary_dim,
                  model.rotary.interleaved)}  # fmt: skip
    T = {"input_norm": layer.input_norm, "post_norm": layer.post_attention_norm}
    if qk_norm is not None:
        T["q_norm"], T["k_norm"] = a.q_norm, a.k_norm
    qkv = step.qkv.get(i)
    if qkv is not None:
        C["qkv"] = True
        _add_linear(C, T, "qkv", qkv)
    else:
        for name in ("q", "k", "v"):
            _add_linear(C, T, name, getattr(a, name))
    _add_linear(C, T, "o", a.o)
    if isinstance(ffn, GatedMLP):
        C["ffn"] = "mlp"
        _add_mlp(C, T, "mlp.", ffn)
    else:
        r = ffn.router
        C.update(ffn="moe", top_k=ffn.experts_per_token or r.top_k, route=r.config(),
                 shared=ffn.shared is not None, experts=None)  # fmt: skip
        T["router.w"] = r.weight
        for key, t in (("router.b", r.bias), ("router.cb", r.correction_bias)):
            if t is not None:
                T[key] = t
        if ffn.shared is not None:
            _add_mlp(C, T, "shared.", ffn.shared)
            if ffn.shared_gate is not None:
                _add_linear(C, T, "shared_gate", ffn.shared_gate)
        cache, fused = model.cache, model.fused
        gather = GATHER_IN_GRAPH and not ffn.weight_input  # Llama 4 weights inputs
        if (gather and fused is not None and fused.failed is None and fused.scheme in _ARGS
                and cache.all_resident() and fused.applies(cache.fast_views(ffn.layer))):  # fmt: skip
            # the kernel the block's path runs, for the same bits: FusedExperts.kernel
            # (int8_vnni for int8_row in bf16); Int4Experts runs its scheme's op
            kernel = getattr(fused, "kernel", fused.scheme)
            C["experts"] = (kernel, fused.act)
            views = cache.fast_views(ffn.layer)
            for n in _ARGS[kernel]:
                # a tensor object of its own: FusedExperts marks the block path's views
                # dynamic, and a marking the graph did not see at compile time recompiles it
                T["experts." + n] = views[n].view(views[n].shape)
            T["slots"] = cache.slot_table(ffn.layer)
    names = tuple(T)
    return tuple(C.items()), names, [T[n] for n in names]


def _add_mlp(C, T, prefix: str, m: GatedMLP) -> None:
    C[prefix + "act"] = m.act
    for name in ("gate", "up", "down"):
        _add_linear(C, T, prefix + name, getattr(m, name))


# ---- the step ------------------------------------------------------------------------------


def eligible(model) -> str | None:
    """Why the compiled step cannot run this model (None: it can)."""
    if model.device.type != "cpu":
        return "not on the CPU"
    from .transformer import DecoderLayer

    for layer in model.layers:
        a = getattr(layer, "attn", None)
        if type(layer) is not DecoderLayer or type(a) is not GQAttention:
            return "a layer other than grouped-query attention"
        if a.sinks is not None or a.sliding_window is not None or a.output_gate or a.clip_qkv:
            return "attention with sinks, a window, an output gate or clipping"
        if isinstance(layer.ffn, MoEBlock) and layer.ffn.router.uniform is not None:
            return "uniform routing (a benchmark setting)"
        if not isinstance(layer.ffn, (MoEBlock, GatedMLP)):
            return "a feed-forward block of another kind"
        if isinstance(layer.ffn, GatedMLP) and layer.ffn.act not in ACTIVATIONS:
            return "a dense activation of another kind"
    int4 = [lin for lin in _all_linears(model) if isinstance(lin, Int4Linear)]
    usable = (x.decode_kernel_applies() or x.prepare_kernel() for x in int4)
    if int4 and (model.dtype != torch.bfloat16 or not all(usable)):
        return "int4 weights outside bf16"
    return None


def _all_linears(model):
    for layer in model.layers:
        a, f = layer.attn, layer.ffn
        yield from (a.q, a.k, a.v, a.o)
        mlps = [f] if isinstance(f, GatedMLP) else ([f.shared] if f.shared is not None else [])
        for m in mlps:
            yield from (m.gate, m.up, m.down)
        if isinstance(f, MoEBlock) and f.shared_gate is not None:
            yield f.shared_gate
    yield model.lm_head


class LayerPlan:
    """A layer's graphs and tensors at one top-k, and the compiled code its current KV
    buffers run (Graphs: guards checked when the buffers are new)."""

    __slots__ = ("top_k", "graphs", "tensors", "in_graph", "_fn", "_kv")

    def __init__(self, top_k, graphs: Graphs, tensors: list, in_graph: bool):
        self.top_k, self.graphs, self.tensors, self.in_graph = top_k, graphs, tensors, in_graph
        self._fn, self._kv = None, (_gone, _gone)  # weak: a dropped cache is freed

    def fn_for(self, args: tuple):
        """args: (x, k_buf, v_buf, ...) as layer_step takes them."""
        k_buf, v_buf = args[1], args[2]
        if self._kv[0]() is not k_buf or self._kv[1]() is not v_buf:
            # the cache's capacity is a dynamic dimension: one graph as the cache grows
            torch._dynamo.maybe_mark_dynamic(k_buf, 2)
            torch._dynamo.maybe_mark_dynamic(v_buf, 2)
            self._fn = self.graphs.find(args)
            self._kv = (weakref.ref(k_buf), weakref.ref(v_buf))
        return self._fn


def _gone() -> None:  # a weak reference whose tensor is gone
    return None


class DecodeStep:
    """`__call__(token [1, 1], kv) -> logits [1, 1, V]` for a KV cache holding >= 2 positions;
    `failed` (with the reason) once compiling did not work (the model then runs op by op)."""

    def __init__(self, model):
        self.model = model
        self.failed: str | None = None
        self.fbgemm = model.dtype == torch.bfloat16  # FBGEMM for bf16, as Int8Linear decides
        self.qkv = {i: q for i, layer in enumerate(model.layers)
                    if (q := _fused_qkv(layer.attn)) is not None}  # fmt: skip
        self.blocks, self.moe = [], []
        for layer in model.layers:
            handle = torch.tensor(-1)
            if isinstance(layer.ffn, MoEBlock):
                layer.ffn.dtype = model.dtype
                handle = torch.tensor(len(_BLOCKS))
                _BLOCKS.append(weakref.ref(layer.ffn))
            self.blocks.append(handle)
        self._plans: dict[int, LayerPlan] = {}
        head = model.lm_head
        C, T = {"fbgemm": self.fbgemm}, {}
        _add_linear(C, T, "head", head)
        self._head = kind, w, s, z = C["head"], T["head.w"], T.get("head.s"), T.get("head.z")
        self._head_args = (model.norm, model.args.rms_norm_eps, kind, w, s, self.fbgemm, z)
        self._head_fn = None  # found on the first call, with its first input
        self._rope = (0, torch.empty(0), torch.empty(0))  # _cos_sin's table: first position

    def _plan(self, i: int, layer) -> LayerPlan:
        """Layer i's plan at its current top-k."""
        k = getattr(layer.ffn, "experts_per_token", None)
        plan = self._plans.get(i)
        if plan is None or plan.top_k != k:
            consts, names, tensors = _layer_params(self, i, layer)
            plan = self._plans[i] = LayerPlan(k, _layer_graphs(consts, names), tensors,
                                              dict(consts).get("experts") is not None)  # fmt: skip
        return plan

    ROPE_ROWS = 256  # positions whose rotary cos/sin one call of the model's rotary makes

    def _cos_sin(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE's cos and sin [1, R] float32 at `position`: rows of a table made for the next
        ROPE_ROWS positions at once (one position a call took about 15 us, 8 ops, a token);
        the same elementwise arithmetic, the same values."""
        first, cos, sin = self._rope
        if not first <= position < first + len(cos):
            positions = torch.arange(position, position + self.ROPE_ROWS)
            cos, sin = self.model.rotary.cos_sin(positions, torch.float32)
            first, self._rope = position, (position, cos, sin)
        i = position - first
        return cos[i : i + 1], sin[i : i + 1]

    def __call__(self, tokens: torch.Tensor, kv) -> torch.Tensor:
        m, start = self.model, kv.length
        cos, sin = self._cos_sin(start)
        if m.cache is not None:
            m.cache.begin_step()
        x = m.embed[tokens.reshape(-1)].float()  # [1, H]
        length, chosen = torch.tensor(start), []
        for i, layer in enumerate(m.layers):
            plan = self._plan(i, layer)
            k_buf, v_buf = kv.layers[i]
            args = (x, k_buf, v_buf, length, cos, sin, self.blocks[i], *plan.tensors)
            x, k, v, experts = plan.fn_for(args)(*args)
            kv.write(i, start, 2, k, v)
            if plan.in_graph:
                chosen.append((layer.ffn.layer, experts))
        kv.length = start + 1
        if chosen:  # what the block's own path counts, for the experts gathered in the graph
            layers, rows = [layer for layer, _ in chosen], torch.cat([e for _, e in chosen])
            m.usage.record_token(layers, rows.numpy())
            m.cache.count_resident_uses(layers, rows.tolist())
        args = (x, *self._head_args)  # x [1, H] float32 and the step's own constants
        if self._head_fn is None:
            self._head_fn = HEAD_GRAPHS.find(args)
        return self._head_fn(*args).view(1, 1, -1)

    def warm_up(self) -> float:
        """Compile now (at load) on a throw-away cache: seconds taken, or -1 where it failed.
        The model's usage counts and cache counters are put back afterwards."""
        m = self.model
        started = time.perf_counter()
        usage = m.usage.array.copy()
        counters = m.cache.counters.snapshot() if m.cache is not None else None
        uses = dict(m.cache.uses) if m.cache is not None else None
        try:
            kv = m.new_cache()
            m.forward(torch.tensor([[0, 1]]), kv, compiled=False)
            with torch.inference_mode():
                self(torch.tensor([[2]]), kv)  # the cache's capacity is dynamic
        except Exception as e:  # Inductor raises many kinds (compiler missing, codegen bugs)
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(
                f"Compiling the decode step failed ({self.failed}); decoding op by op instead "
                "(slower). Set ITAMAE_COMPILE=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=2,
            )
            return -1.0
        finally:
            m.usage.array[...] = usage
            if counters is not None:
                m.cache.counters, m.cache.uses = counters, uses
        return time.perf_counter() - started
