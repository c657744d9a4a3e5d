import torch

from ft_dist.sparse.update import num_to_drop, prune_and_grow, random_mask


def test_drop_and_grow_on_a_hand_made_tensor():
    weight = torch.tensor([[0.5, -0.1, 0.0, 0.9], [0.0, 0.05, 0.0, -0.3]])
    mask = weight != 0  # active: 0.5, -0.1, 0.9, 0.05, -0.3
    grads = torch.tensor([[9.0, 9.0, 0.2, 9.0], [0.7, 9.0, 0.1, 9.0]])
    result = prune_and_grow(mask, weight.abs(), grads.abs(), num_swap=2)
    # Drop the two smallest active magnitudes: 0.05 (flat 5) and -0.1 (flat 1).
    assert sorted(result.dropped.tolist()) == [1, 5]
    # Grow among inactive-after-drop {1, 2, 4, 5, 6}: the largest |grad| are 9.0 at 1 and 5
    # (just-dropped positions may be re-grown).
    assert sorted(result.grown.tolist()) == [1, 5]
    assert int(result.mask.sum()) == int(mask.sum())


def test_grow_never_picks_an_active_weight():
    weight = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 0.0])
    mask = weight != 0
    grads = torch.tensor([100.0, 100.0, 100.0, 1.0, 2.0, 3.0])
    result = prune_and_grow(mask, weight.abs(), grads, num_swap=1)
    assert result.dropped.tolist() == [0]
    assert result.grown.tolist() == [0]  # the just-dropped position has the top score
    result = prune_and_grow(mask, weight.abs(), torch.tensor([0.0, 100.0, 100.0, 1.0, 2.0, 3.0]), 1)
    assert result.grown.tolist() == [5]
    assert result.mask.tolist() == [False, True, True, False, False, True]


def test_num_to_drop_is_ceil_of_fraction():
    assert num_to_drop(10, 0.5) == 5
    assert num_to_drop(11, 0.5) == 6
    assert num_to_drop(10, 0.0) == 0
    assert num_to_drop(3, 1.0) == 3
    assert num_to_drop(10, 0.3) == 3  # no float round-up to 4


def test_num_to_drop_official_arithmetic_differs_just_above_an_integer():
    # 0.07 * 100 = 7.000000000000001 in float64: ceil(f n - 1e-9) = 7 (ours), while the
    # official code's math.ceil(rate * nonzeros) gives 8 (sparsity.compat: official-*).
    assert 0.07 * 100 > 7
    assert num_to_drop(100, 0.07) == 7
    assert num_to_drop(100, 0.07, official=True) == 8
    # Where f n is exact, or lands below the integer, both agree.
    for active, fraction in ((10, 0.5), (11, 0.5), (10, 0.3), (3, 1.0), (10, 0.0), (1000, 0.8)):
        assert num_to_drop(active, fraction, official=True) == num_to_drop(active, fraction)


def test_random_mask_has_exact_count_and_is_seeded():
    a = random_mask(torch.Size([7, 13]), 20, torch.Generator().manual_seed(1))
    b = random_mask(torch.Size([7, 13]), 20, torch.Generator().manual_seed(1))
    assert int(a.sum()) == 20 and torch.equal(a, b)


def test_balanced_growth_gives_every_row_back_what_it_lost():
    # Row 0 holds the two smallest weights, so it loses both; the gradient is largest in
    # row 1, where unbalanced growth would put both new weights.
    weight = torch.tensor([[0.1, 0.2, 0.0, 0.0], [0.9, 0.8, 0.0, 0.0]])
    mask = weight != 0
    grads = torch.tensor([[0.0, 0.0, 0.3, 0.1], [0.0, 0.0, 5.0, 4.0]])
    plain = prune_and_grow(mask, weight.abs(), grads, num_swap=2)
    assert plain.mask.sum(dim=1).tolist() == [0, 4]
    balanced = prune_and_grow(mask, weight.abs(), grads, num_swap=2, balanced=True)
    assert sorted(balanced.dropped.tolist()) == [0, 1]
    # Row 0 regrows 2 of its own positions (best |g| first: the just-dropped 0 and 1 tie at
    # 0 and lose to 2 and 3); row 1 lost nothing and gains nothing.
    assert sorted(balanced.grown.tolist()) == [2, 3]
    assert balanced.mask.sum(dim=1).tolist() == [2, 2]
