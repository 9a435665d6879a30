"""The recursive core follows TRM: shared network, truncated backprop, post-norm blocks, init."""

import pytest
import torch

from hybrid_reason.model.core import Carry, CoreConfig, RecursiveCore, rms_norm, swiglu_width


def make_core(mixer="attention", n=2, T=3, layers=2, seq=9, d=32, seed=0):
    torch.manual_seed(seed)
    return RecursiveCore(CoreConfig(d_model=d, num_heads=4, num_layers=layers, mixer=mixer, n=n, T=T), seq)


def grad_modes_of_block_calls(core, x, carry):
    """Record torch.is_grad_enabled() at every block call during one deep recursion."""
    modes = []
    hooks = [b.register_forward_hook(lambda m, i, o: modes.append(torch.is_grad_enabled())) for b in core.blocks]
    core.deep_recursion(x, carry)
    for h in hooks:
        h.remove()
    return modes


@pytest.mark.parametrize("n,T,layers", [(2, 3, 2), (6, 3, 2), (1, 1, 1), (3, 2, 3)])
def test_only_the_last_cycle_runs_with_grad(n, T, layers):
    core = make_core(n=n, T=T, layers=layers)
    x = torch.randn(2, 9, 32, requires_grad=True)
    modes = grad_modes_of_block_calls(core, x, core.initial_carry(2))
    per_cycle = (n + 1) * layers
    assert len(modes) == T * per_cycle  # effective depth T(n+1)L
    assert modes == [False] * ((T - 1) * per_cycle) + [True] * per_cycle


def test_gradients_equal_a_reference_that_detaches_explicitly():
    core = make_core(n=2, T=3)
    x = torch.randn(2, 9, 32, requires_grad=True)
    carry = core.initial_carry(2)
    _, y = core.deep_recursion(x, carry)
    y.square().mean().backward()
    got = [p.grad.clone() for p in core.parameters()] + [x.grad.clone()]

    core.zero_grad()
    x.grad = None
    rope = core.rope(x)
    yr, zr = carry
    for _ in range(core.cfg.T - 1):  # the reference: plain autograd, then cut the graph by hand
        yr, zr = core.latent_recursion(x, yr, zr, rope)
    yr, zr = yr.detach(), zr.detach()
    yr, _ = core.latent_recursion(x, yr, zr, rope)
    yr.square().mean().backward()
    want = [p.grad.clone() for p in core.parameters()] + [x.grad.clone()]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert all(g.abs().sum() > 0 for g in got)


def test_new_carry_is_detached_and_y_carries_grad():
    core = make_core()
    x = torch.randn(2, 9, 32, requires_grad=True)
    carry, y = core.deep_recursion(x, core.initial_carry(2))
    assert isinstance(carry, Carry)
    assert not carry.y.requires_grad and not carry.z.requires_grad
    assert carry.y.grad_fn is None and carry.z.grad_fn is None
    assert y.requires_grad
    torch.testing.assert_close(carry.y, y.detach())


def test_same_seed_same_output_other_seed_other_output():
    x = torch.randn(2, 9, 32)
    out = [make_core(seed=s).deep_recursion(x, make_core(seed=s).initial_carry(2))[1] for s in (0, 0, 1)]
    torch.testing.assert_close(out[0], out[1])
    assert not torch.allclose(out[0], out[2])


def test_carry_starts_from_fixed_truncated_normal_buffers():
    core = make_core(d=256)
    carry = core.initial_carry(3)
    assert carry.y.shape == (3, 9, 256)
    torch.testing.assert_close(carry.y[0, 0], carry.y[2, 8])  # one vector, broadcast
    assert carry.y[0, 0].abs().max() <= 2.0 / 0.8796 + 1e-6  # truncated at 2 std of the pre-rescale normal
    assert 0.8 < core.y_init.std() < 1.2
    assert not torch.allclose(core.y_init, core.z_init)
    assert {"y_init", "z_init"} <= set(core.state_dict())  # saved with the model


def test_block_is_post_norm_without_biases_or_norm_weights():
    core = make_core(d=64)
    assert all(m.bias is None for m in core.modules() if isinstance(m, torch.nn.Linear))
    assert not any("norm" in name for name, _ in core.named_parameters())
    out = core.blocks[0](torch.randn(2, 9, 64) * 10, core.rope(torch.zeros(2, 9, 64)))
    rms = out.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-3, rtol=0)  # output of an RMSNorm


def test_linear_init_is_truncated_lecun_normal():
    core = make_core(d=512, layers=1)
    w = core.blocks[0].mlp.gate_up.weight  # fan_in 512
    assert abs(w.std().item() - 512**-0.5) < 0.1 * 512**-0.5
    assert w.abs().max() <= 2 * 512**-0.5 / 0.8796 + 1e-6


def test_swiglu_width_matches_trm():
    assert swiglu_width(512, 4) == 1536
    assert swiglu_width(64, 4) == 256
    assert make_core(d=512, layers=1).blocks[0].mlp.down.in_features == 1536


def test_attention_is_non_causal():
    core = make_core(n=1, T=1, layers=1)
    x = torch.randn(1, 9, 32)
    _, y1 = core.deep_recursion(x, core.initial_carry(1))
    x2 = x.clone()
    x2[0, -1] += 1.0  # change only the last slot
    _, y2 = core.deep_recursion(x2, core.initial_carry(1))
    assert not torch.allclose(y1[0, 0], y2[0, 0])  # the first slot sees it


def test_mlp_mixer_mixes_slots_and_needs_its_length():
    core = make_core(mixer="mlp", n=1, T=1)
    x = torch.randn(1, 9, 32)
    _, y1 = core.deep_recursion(x, core.initial_carry(1))
    x2 = x.clone()
    x2[0, -1] += 1.0
    _, y2 = core.deep_recursion(x2, core.initial_carry(1))
    assert not torch.allclose(y1[0, 0], y2[0, 0])
    assert core.rope(x) is None
    with pytest.raises(ValueError, match="built for 9 slots, got 5"):
        core.deep_recursion(torch.randn(1, 5, 32), core.initial_carry(1, 5))


def test_rms_norm_has_unit_rms():
    h = rms_norm(torch.randn(4, 7, 16) * 3, 1e-5)
    torch.testing.assert_close(h.pow(2).mean(-1), torch.ones(4, 7), atol=1e-4, rtol=0)


def test_bad_core_config_names_the_key():
    with pytest.raises(ValueError, match="core.mixer"):
        CoreConfig(mixer="conv")
    with pytest.raises(ValueError, match="core.d_model 30 is not divisible by core.num_heads 8"):
        CoreConfig(d_model=30)


def test_unrolled_core_is_a_stack_of_distinct_blocks_all_under_grad():
    """The `deep` control: T(n+1)L distinct blocks, each called once per step, every call with grad."""
    n, T, layers = 2, 3, 2
    torch.manual_seed(0)
    deep = RecursiveCore(CoreConfig(d_model=32, num_heads=4, num_layers=layers, n=n, T=T, unrolled=True), 9)
    shared = make_core(n=n, T=T, layers=layers)
    assert len(deep.blocks) == T * (n + 1) * layers
    block_params = lambda core: sum(p.numel() for p in core.blocks.parameters())  # noqa: E731
    assert block_params(deep) == T * (n + 1) * block_params(shared)
    calls = {id(b): 0 for b in deep.blocks}
    hooks = [b.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls[id(m)] + 1)) for b in deep.blocks]
    x = torch.randn(2, 9, 32, requires_grad=True)
    modes = grad_modes_of_block_calls(deep, x, deep.initial_carry(2))
    for h in hooks:
        h.remove()
    assert modes == [True] * (T * (n + 1) * layers) and set(calls.values()) == {1}
    _, y = deep.deep_recursion(x, deep.initial_carry(2))
    y.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in deep.blocks[0].parameters())
