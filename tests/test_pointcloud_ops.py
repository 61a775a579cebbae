"""PointNet++ sampling/grouping ops against brute-force Python references, and the models built on them."""
import pytest
import torch

from nftkit.adapters.pointcloud.models import POINT_MODELS, build_point_model
from nftkit.adapters.pointcloud.ops import (ball_query, farthest_point_sample, group_all, index_points,
                                            sample_and_group, square_distance)


def _cloud(b=3, n=40, seed=0):
    return torch.rand(b, n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _d2(p, q):
    return sum((float(p[k]) - float(q[k])) ** 2 for k in range(3))


def brute_fps(xyz, npoint):
    out = []
    for cloud in xyz:
        chosen = [0]
        nearest = [_d2(p, cloud[0]) for p in cloud]
        while len(chosen) < npoint:
            far = max(range(len(cloud)), key=lambda i: (nearest[i], -i))  # first index wins ties
            chosen.append(far)
            nearest = [min(nearest[i], _d2(cloud[i], cloud[far])) for i in range(len(cloud))]
        out.append(chosen)
    return torch.tensor(out)


def brute_ball_query(radius, nsample, xyz, centres):
    out = []
    for cloud, cs in zip(xyz, centres):
        rows = []
        for c in cs:
            inside = [i for i in range(len(cloud)) if _d2(cloud[i], c) < radius ** 2][:nsample]
            rows.append(inside + [inside[0]] * (nsample - len(inside)))
        out.append(rows)
    return torch.tensor(out)


def test_square_distance_matches_cdist():
    a, b = _cloud(2, 30), _cloud(2, 20, seed=1)
    assert torch.allclose(square_distance(a, b), torch.cdist(a, b) ** 2, atol=1e-5)


def test_farthest_point_sample_matches_brute_force():
    xyz = _cloud()
    assert torch.equal(farthest_point_sample(xyz, 12), brute_fps(xyz, 12))


def test_farthest_point_sample_spreads_out():
    # two tight clusters: the second centre must come from the other cluster
    xyz = torch.cat([torch.zeros(1, 10, 3), torch.ones(1, 10, 3)], 1) + _cloud(1, 20) * 0.01
    idx = farthest_point_sample(xyz, 2)
    assert idx[0, 0] == 0 and idx[0, 1] >= 10


@pytest.mark.parametrize("radius,nsample", [(0.3, 4), (0.6, 8), (2.0, 16), (0.05, 5)])
def test_ball_query_matches_brute_force(radius, nsample):
    xyz = _cloud()
    centres = index_points(xyz, farthest_point_sample(xyz, 6))
    assert torch.equal(ball_query(radius, nsample, xyz, centres), brute_ball_query(radius, nsample, xyz, centres))


def test_ball_query_with_more_slots_than_points():
    xyz = _cloud(2, 5)
    idx = ball_query(5.0, 8, xyz, xyz[:, :2])
    assert torch.equal(idx, brute_ball_query(5.0, 8, xyz, xyz[:, :2]))


def test_index_points_matches_loop():
    pts = _cloud(2, 10)
    idx = torch.randint(0, 10, (2, 4, 3), generator=torch.Generator().manual_seed(2))
    ref = torch.stack([torch.stack([torch.stack([pts[b, idx[b, s, k]] for k in range(3)]) for s in range(4)]) for b in range(2)])
    assert torch.equal(index_points(pts, idx), ref)


def test_sample_and_group_is_relative_to_centres():
    xyz, feats = _cloud(2, 30), torch.rand(2, 30, 5)
    centres, grouped = sample_and_group(8, 0.5, 6, xyz, feats)
    idx = brute_ball_query(0.5, 6, xyz, centres)
    assert grouped.shape == (2, 8, 6, 8)
    assert torch.allclose(grouped[..., :3], index_points(xyz, idx) - centres.unsqueeze(2))
    assert torch.equal(grouped[..., 3:], index_points(feats, idx))
    assert grouped[..., :3].norm(dim=-1).amax() < 0.5
    _, everything = group_all(xyz, feats)
    assert everything.shape == (2, 1, 30, 8)


@pytest.mark.parametrize("arch", POINT_MODELS.names())
def test_models_are_permutation_invariant_and_shaped(arch):
    torch.manual_seed(0)
    model = build_point_model(arch, 4, width=0.125, centres=None if arch == "pointnet" else [16, 4]).eval()
    x = _cloud(2, 64)
    perm = torch.randperm(64)
    out = model(x)
    assert out.shape == (2, 4)
    if arch == "pointnet":  # PointNet++'s FPS starts at point 0, so only PointNet is exactly order-free
        assert torch.allclose(out, model(x[:, perm]), atol=1e-5)


def test_wrong_centre_count_is_a_config_error():
    from nftkit.errors import ConfigError

    with pytest.raises(ConfigError, match="centres needs 2 values"):
        build_point_model("pointnet2_ssg", 4, centres=[8])
