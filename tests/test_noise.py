"""Tests for resetax.noise: rates, class mappings, determinism and input validation.

Rates are compared with their target within a binomial tolerance: a realized rate over n
independent draws of probability p has standard deviation sqrt(p (1 - p) / n). Single rates use
4 sigma; matrix entries, compared many at a time, use 5 sigma.
"""

import numpy as np
import pytest
from scipy import stats

from resetax import noise

C10 = 10
PER_CLASS = 2000
LABELS10 = np.repeat(np.arange(C10), PER_CLASS)

# CIFAR-100 from the dataset's documentation: the 100 classes in alphabetical order (their label
# ids) and the 20 superclasses in alphabetical order (their coarse ids) with their members.
FINE_NAMES = """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile
cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp
lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree
orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum
rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider
squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train
trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split()
SUPERCLASS_MEMBERS = [
    "beaver dolphin otter seal whale",  # aquatic_mammals
    "aquarium_fish flatfish ray shark trout",  # fish
    "orchid poppy rose sunflower tulip",  # flowers
    "bottle bowl can cup plate",  # food_containers
    "apple mushroom orange pear sweet_pepper",  # fruit_and_vegetables
    "clock keyboard lamp telephone television",  # household_electrical_devices
    "bed chair couch table wardrobe",  # household_furniture
    "bee beetle butterfly caterpillar cockroach",  # insects
    "bear leopard lion tiger wolf",  # large_carnivores
    "bridge castle house road skyscraper",  # large_man-made_outdoor_things
    "cloud forest mountain plain sea",  # large_natural_outdoor_scenes
    "camel cattle chimpanzee elephant kangaroo",  # large_omnivores_and_herbivores
    "fox porcupine possum raccoon skunk",  # medium_mammals
    "crab lobster snail spider worm",  # non-insect_invertebrates
    "baby boy girl man woman",  # people
    "crocodile dinosaur lizard snake turtle",  # reptiles
    "hamster mouse rabbit shrew squirrel",  # small_mammals
    "maple_tree oak_tree palm_tree pine_tree willow_tree",  # trees
    "bicycle bus motorcycle pickup_truck train",  # vehicles_1
    "lawn_mower rocket streetcar tank tractor",  # vehicles_2
]


def binomial_tol(p, n, sigmas=4.0):
    return sigmas * np.sqrt(p * (1 - p) / n)


def assert_rate(noisy, clean, expected):
    rate = noise.realized_noise_rate(noisy, clean)
    assert abs(rate - expected) <= binomial_tol(expected, clean.size), (rate, expected)


def assert_matrix_close(noisy, clean, expected):
    """Each entry of the measured matrix within 5 sigma of the expected one (exact for 0 and 1)."""
    num_classes = expected.shape[0]
    measured = noise.empirical_transition_matrix(noisy, clean, num_classes)
    counts = np.bincount(clean, minlength=num_classes)[:, None]
    np.testing.assert_array_less(
        np.abs(measured - expected), binomial_tol(expected, counts, sigmas=5.0) + 1e-12
    )


def real_cifar100_labels(per_class=100):
    labels = np.repeat(np.arange(100), per_class)
    return labels, noise.CIFAR100_COARSE_OF_FINE[labels]


# ---------------------------------------------------------------------------------------------
# Symmetric and pair noise


@pytest.mark.parametrize("noise_rate", [0.2, 0.6])
def test_symmetric_other_classes(noise_rate):
    noisy, is_noisy = noise.symmetric_noise(LABELS10, noise_rate, C10, seed=1)
    np.testing.assert_array_equal(is_noisy, noisy != LABELS10)
    assert_rate(noisy, LABELS10, noise_rate)
    expected = np.full((C10, C10), noise_rate / (C10 - 1))
    np.fill_diagonal(expected, 1 - noise_rate)
    assert_matrix_close(noisy, LABELS10, expected)


def test_symmetric_all_classes():
    noise_rate = 0.5
    noisy, is_noisy = noise.symmetric_noise(
        LABELS10, noise_rate, C10, seed=2, include_true_class=True
    )
    np.testing.assert_array_equal(is_noisy, noisy != LABELS10)
    assert_rate(noisy, LABELS10, noise_rate * (C10 - 1) / C10)
    expected = np.full((C10, C10), noise_rate / C10) + np.eye(C10) * (1 - noise_rate)
    assert_matrix_close(noisy, LABELS10, expected)


@pytest.mark.parametrize("include_true_class", [False, True])
def test_empirical_matrix_of_symmetric_noise_matches_transition_matrix(include_true_class):
    noisy, _ = noise.symmetric_noise(
        LABELS10, 0.4, C10, seed=3, include_true_class=include_true_class
    )
    expected = noise.transition_matrix("symmetric", C10, 0.4, include_true_class=include_true_class)
    assert_matrix_close(noisy, LABELS10, expected)


def test_symmetric_extreme_rates():
    noisy, is_noisy = noise.symmetric_noise(LABELS10, 0.0, C10, seed=0)
    np.testing.assert_array_equal(noisy, LABELS10)
    assert not is_noisy.any()
    noisy, is_noisy = noise.symmetric_noise(LABELS10, 1.0, C10, seed=0)
    assert is_noisy.all()


def test_pair_noise_flips_to_next_class():
    noisy, is_noisy = noise.pair_noise(LABELS10, 0.3, C10, seed=4)
    np.testing.assert_array_equal(noisy[is_noisy], (LABELS10[is_noisy] + 1) % C10)
    np.testing.assert_array_equal(noisy[~is_noisy], LABELS10[~is_noisy])
    assert_rate(noisy, LABELS10, 0.3)
    assert_matrix_close(noisy, LABELS10, noise.transition_matrix("pair", C10, 0.3))


# ---------------------------------------------------------------------------------------------
# CIFAR asymmetric noise


def test_cifar10_map_is_the_published_one():
    airplane, automobile, bird, cat, deer, dog, horse, truck = 0, 1, 2, 3, 4, 5, 7, 9
    assert dict(noise.CIFAR10_ASYMMETRIC_MAP) == {
        truck: automobile,
        bird: airplane,
        deer: horse,
        cat: dog,
        dog: cat,
    }


def test_asymmetric_cifar10_flips_only_sources_to_their_targets():
    noise_rate = 0.4
    noisy, is_noisy = noise.asymmetric_cifar10_noise(LABELS10, noise_rate, seed=5)
    np.testing.assert_array_equal(is_noisy, noisy != LABELS10)
    sources = np.isin(LABELS10, list(noise.CIFAR10_ASYMMETRIC_MAP))
    assert not is_noisy[~sources].any()
    targets = np.array([noise.CIFAR10_ASYMMETRIC_MAP[int(c)] for c in LABELS10[is_noisy]])
    np.testing.assert_array_equal(noisy[is_noisy], targets)
    for source in noise.CIFAR10_ASYMMETRIC_MAP:
        members = LABELS10 == source
        assert_rate(noisy[members], LABELS10[members], noise_rate)
    assert_matrix_close(
        noisy, LABELS10, noise.transition_matrix("asymmetric_cifar10", C10, noise_rate)
    )


def test_cifar100_superclass_table_matches_class_names():
    assert FINE_NAMES == sorted(FINE_NAMES) and len(FINE_NAMES) == 100
    expected = np.full(100, -1)
    for coarse, members in enumerate(SUPERCLASS_MEMBERS):
        for name in members.split():
            expected[FINE_NAMES.index(name)] = coarse
    np.testing.assert_array_equal(noise.CIFAR100_COARSE_OF_FINE, expected)
    assert not noise.CIFAR100_COARSE_OF_FINE.flags.writeable


def test_next_class_in_superclass_cycles_sorted_members():
    coarse_of_fine = np.array([2, 0, 2, 0, 2, 1, -1])
    np.testing.assert_array_equal(
        noise.next_class_in_superclass(coarse_of_fine), [2, 3, 4, 1, 0, 5, 6]
    )


def test_asymmetric_cifar100_stays_in_true_superclass():
    labels, coarse = real_cifar100_labels()
    noise_rate = 0.4
    noisy, is_noisy = noise.asymmetric_cifar100_noise(labels, coarse, noise_rate, seed=6)
    np.testing.assert_array_equal(noise.CIFAR100_COARSE_OF_FINE[noisy], coarse)
    # Every class has four siblings, so every flip changes the label.
    assert_rate(noisy, labels, noise_rate)
    # The real superclasses are not blocks of five ids: some flips leave their block.
    assert np.any(noisy[is_noisy] // 5 != labels[is_noisy] // 5)
    next_class = noise.next_class_in_superclass(noise.CIFAR100_COARSE_OF_FINE)
    np.testing.assert_array_equal(noisy[is_noisy], next_class[labels[is_noisy]])
    expected = noise.transition_matrix(
        "asymmetric_cifar100", 100, noise_rate, coarse_of_fine=noise.CIFAR100_COARSE_OF_FINE
    )
    assert_matrix_close(noisy, labels, expected)


def test_asymmetric_cifar100_uses_the_coarse_labels_passed_in():
    # A random superclass assignment: contiguous blocks of class ids would put flips across
    # superclasses, reading the pairs keeps every flip inside.
    coarse_of_fine = np.random.default_rng(0).permutation(100) % 20
    labels = np.repeat(np.arange(100), 20)
    coarse = coarse_of_fine[labels]
    noisy, is_noisy = noise.asymmetric_cifar100_noise(labels, coarse, 1.0, seed=7)
    assert is_noisy.all()
    np.testing.assert_array_equal(coarse_of_fine[noisy], coarse)
    for c in range(20):
        members = np.flatnonzero(coarse_of_fine == c)
        cycle = noisy[np.searchsorted(labels, members)]
        np.testing.assert_array_equal(cycle, np.roll(members, -1))


def test_asymmetric_cifar100_rejects_inconsistent_superclasses():
    labels, coarse = real_cifar100_labels(per_class=2)
    coarse = coarse.copy()
    coarse[0] = (coarse[0] + 1) % 20
    with pytest.raises(ValueError, match="coarse_labels"):
        noise.asymmetric_cifar100_noise(labels, coarse, 0.2, seed=0)
    with pytest.raises(ValueError, match="coarse_labels"):
        noise.asymmetric_cifar100_noise(labels, coarse[:-1], 0.2, seed=0)


# ---------------------------------------------------------------------------------------------
# Instance-dependent and transition-matrix noise


def instance_inputs(n, dim=12, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, dim // 3))


def test_instance_dependent_rate_is_mean_of_truncated_normal():
    labels = np.arange(8000) % 5
    inputs = instance_inputs(labels.size)
    for noise_rate in (0.3, 0.05):
        noisy, is_noisy = noise.instance_dependent_noise(labels, inputs, noise_rate, 5, seed=8)
        np.testing.assert_array_equal(is_noisy, noisy != labels)
        std = 0.1
        mean = stats.truncnorm(
            -noise_rate / std, (1 - noise_rate) / std, loc=noise_rate, scale=std
        ).mean()
        assert_rate(noisy, labels, mean)


def test_instance_dependent_noise_depends_on_the_input():
    # Scaled-up inputs make the softmax over wrong classes one-hot, so the noisy label is a
    # function of the input: equal inputs agree, different inputs of one class do not all agree.
    distinct = 40
    inputs = 1e3 * np.repeat(instance_inputs(distinct), 5, axis=0)
    labels = np.zeros(inputs.shape[0], dtype=np.int32)
    noisy, is_noisy = noise.instance_dependent_noise(
        labels, inputs, 1.0, 6, seed=9, flip_rate_std=0.0
    )
    assert is_noisy.all() and noisy.dtype == np.int32
    by_input = noisy.reshape(distinct, 5)
    assert np.all(by_input == by_input[:, :1])
    assert np.unique(by_input[:, 0]).size > 1


def test_instance_dependent_without_spread_is_exact_rate():
    labels = np.arange(50) % 3
    noisy, _ = noise.instance_dependent_noise(
        labels, instance_inputs(50), 0.0, 3, seed=0, flip_rate_std=0.0
    )
    np.testing.assert_array_equal(noisy, labels)


def test_transition_matrix_noise_matches_matrix():
    num_classes = 4
    matrix = np.random.default_rng(1).dirichlet(np.ones(num_classes), size=num_classes)
    matrix[0] = [0.0, 1.0, 0.0, 0.0]  # a degenerate row must be followed exactly
    matrix[1, 1:] = matrix[1, 1:] / matrix[1, 1:].sum()
    matrix[1, 0] = 0.0  # a zero first entry must never be drawn
    labels = np.repeat(np.arange(num_classes), 3000)
    noisy, is_noisy = noise.transition_matrix_noise(labels, matrix, seed=10)
    np.testing.assert_array_equal(is_noisy, noisy != labels)
    assert_matrix_close(noisy, labels, matrix)


# ---------------------------------------------------------------------------------------------
# Matrices, helpers, dispatch and determinism


def test_transition_matrices_are_row_stochastic_with_the_right_support():
    for kind, num_classes, extra in [
        ("symmetric", 5, {}),
        ("symmetric", 5, {"include_true_class": True}),
        ("pair", 5, {}),
        ("asymmetric_cifar10", 10, {}),
        ("asymmetric_cifar100", 100, {"coarse_of_fine": noise.CIFAR100_COARSE_OF_FINE}),
    ]:
        matrix = noise.transition_matrix(kind, num_classes, 0.3, **extra)
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        assert matrix.min() >= 0
    cifar10 = noise.transition_matrix("asymmetric_cifar10", 10, 0.3)
    assert cifar10[9, 1] == 0.3 and cifar10[9, 9] == 0.7 and cifar10[1, 1] == 1.0
    cifar100 = noise.transition_matrix(
        "asymmetric_cifar100", 100, 0.3, coarse_of_fine=noise.CIFAR100_COARSE_OF_FINE
    )
    rows, cols = np.nonzero(cifar100)
    coarse = noise.CIFAR100_COARSE_OF_FINE
    np.testing.assert_array_equal(coarse[rows], coarse[cols])


def test_empirical_transition_matrix_by_hand():
    clean = np.array([0, 0, 0, 0, 2, 2])
    noisy = np.array([0, 1, 1, 2, 2, 0])
    measured = noise.empirical_transition_matrix(noisy, clean, 3)
    np.testing.assert_array_equal(measured[0], [1 / 4, 2 / 4, 1 / 4])
    assert np.isnan(measured[1]).all()
    np.testing.assert_array_equal(measured[2], [1 / 2, 0, 1 / 2])
    assert noise.realized_noise_rate(noisy, clean) == 4 / 6


def test_apply_noise_dispatches_to_each_model():
    labels, coarse = real_cifar100_labels(per_class=3)
    labels10 = labels % 10
    inputs = instance_inputs(labels.size)
    matrix = noise.transition_matrix("pair", 10, 0.5)
    cases = [
        ("symmetric", labels10, 0.3, 10, {"include_true_class": True},
         lambda: noise.symmetric_noise(labels10, 0.3, 10, seed=11, include_true_class=True)),
        ("pair", labels10, 0.3, 10, {}, lambda: noise.pair_noise(labels10, 0.3, 10, seed=11)),
        ("asymmetric_cifar10", labels10, 0.3, 10, {},
         lambda: noise.asymmetric_cifar10_noise(labels10, 0.3, seed=11)),
        ("asymmetric_cifar100", labels, 0.3, 100, {"coarse_labels": coarse},
         lambda: noise.asymmetric_cifar100_noise(labels, coarse, 0.3, seed=11)),
        ("instance_dependent", labels10, 0.3, 10, {"inputs": inputs},
         lambda: noise.instance_dependent_noise(labels10, inputs, 0.3, 10, seed=11)),
        ("transition_matrix", labels10, None, 10, {"transition_matrix": matrix},
         lambda: noise.transition_matrix_noise(labels10, matrix, seed=11)),
    ]  # fmt: skip
    assert sorted(kind for kind, *_ in cases) == sorted(noise.NOISE_KINDS)
    for kind, clean, noise_rate, num_classes, kwargs, direct in cases:
        noisy, is_noisy = noise.apply_noise(kind, clean, noise_rate, num_classes, seed=11, **kwargs)
        expected_noisy, expected_is_noisy = direct()
        np.testing.assert_array_equal(noisy, expected_noisy, err_msg=kind)
        np.testing.assert_array_equal(is_noisy, expected_is_noisy, err_msg=kind)
        assert is_noisy.any(), kind


@pytest.mark.parametrize(
    "kind",
    ["symmetric", "pair", "asymmetric_cifar10", "instance_dependent", "transition_matrix"],
)
def test_same_seed_same_labels_other_seed_other_labels(kind):
    kwargs = {
        "instance_dependent": {"inputs": instance_inputs(LABELS10.size)},
        "transition_matrix": {"transition_matrix": noise.transition_matrix("pair", 10, 0.3)},
    }.get(kind, {})
    noise_rate = None if kind == "transition_matrix" else 0.3

    def draw(seed):
        return noise.apply_noise(kind, LABELS10, noise_rate, 10, seed=seed, **kwargs)[0]

    np.testing.assert_array_equal(draw(0), draw(0))
    np.testing.assert_array_equal(draw(0), draw(np.random.default_rng(0)))
    assert not np.array_equal(draw(0), draw(1))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_label_dtype_is_preserved(dtype):
    labels = LABELS10[::50].astype(dtype)
    noisy, is_noisy = noise.symmetric_noise(labels, 0.5, 10, seed=0)
    assert noisy.dtype == dtype and is_noisy.dtype == np.bool_
    assert noisy.max() < 10


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("noise_rate", [-0.1, 1.1, float("nan"), float("inf"), "0.2", None, True])
def test_bad_noise_rate(noise_rate):
    with pytest.raises(ValueError, match="noise_rate"):
        noise.symmetric_noise(LABELS10, noise_rate, 10, seed=0)
    with pytest.raises(ValueError, match="noise_rate"):
        noise.transition_matrix("pair", 10, noise_rate)


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.5, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        noise.pair_noise(np.zeros(4, int), 0.2, num_classes, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        noise.transition_matrix("symmetric", num_classes, 0.2)


def test_num_classes_must_fit_the_dataset_kind():
    with pytest.raises(ValueError, match="num_classes"):
        noise.apply_noise("asymmetric_cifar10", LABELS10, 0.2, 11, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        noise.transition_matrix("asymmetric_cifar10", 12, 0.2)
    matrix = noise.transition_matrix("pair", 10, 0.2)
    with pytest.raises(ValueError, match="num_classes"):
        noise.apply_noise("transition_matrix", LABELS10, None, 9, seed=0, transition_matrix=matrix)


@pytest.mark.parametrize(
    "labels",
    [np.array([0, 10]), np.array([-1, 0]), np.array([0.0, 1.0]), np.zeros((2, 2), int), [True]],
)
def test_bad_labels(labels):
    with pytest.raises(ValueError, match="labels"):
        noise.symmetric_noise(labels, 0.2, 10, seed=0)
    with pytest.raises(ValueError, match="labels"):
        noise.asymmetric_cifar10_noise(labels, 0.2, seed=0)


def test_bad_labels_in_helpers():
    with pytest.raises(ValueError, match="clean_labels"):
        noise.empirical_transition_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="noisy_labels"):
        noise.realized_noise_rate(np.array([0.5]), np.array([0]))
    with pytest.raises(ValueError, match="same shape"):
        noise.realized_noise_rate(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="clean_labels"):
        noise.realized_noise_rate(np.array([], int), np.array([], int))


@pytest.mark.parametrize(
    "matrix",
    [
        np.eye(3)[:2],  # not square
        np.array([[1.0]]),  # a single class
        np.array([[0.5, 0.6], [0.0, 1.0]]),  # a row sums to 1.1
        np.array([[1.5, -0.5], [0.0, 1.0]]),  # negative entry
        np.array([[np.nan, 1.0], [0.0, 1.0]]),
        np.array([["a", "b"], ["c", "d"]]),
    ],
)
def test_bad_transition_matrix(matrix):
    with pytest.raises(ValueError, match="transition_matrix"):
        noise.transition_matrix_noise(np.array([0, 1]), matrix, seed=0)


def test_labels_must_fit_the_transition_matrix():
    with pytest.raises(ValueError, match="labels"):
        noise.transition_matrix_noise(np.array([0, 3]), np.eye(3), seed=0)


def test_bad_kind_and_keyword_arguments():
    with pytest.raises(ValueError, match="kind"):
        noise.apply_noise("uniform", LABELS10, 0.2, 10, seed=0)
    with pytest.raises(ValueError, match="kind"):
        noise.transition_matrix("instance_dependent", 10, 0.2)
    with pytest.raises(ValueError, match="coarse_labels"):
        noise.apply_noise("asymmetric_cifar100", LABELS10, 0.2, 100, seed=0)
    with pytest.raises(ValueError, match="include_true_class"):
        noise.apply_noise("pair", LABELS10, 0.2, 10, seed=0, include_true_class=True)
    with pytest.raises(ValueError, match="include_true_class"):
        noise.symmetric_noise(LABELS10, 0.2, 10, seed=0, include_true_class="all")
    with pytest.raises(ValueError, match="noise_rate"):
        noise.apply_noise(
            "transition_matrix", LABELS10, 0.2, 10, seed=0, transition_matrix=np.eye(10)
        )
    with pytest.raises(ValueError, match="coarse_of_fine"):
        noise.transition_matrix("asymmetric_cifar100", 100, 0.2)


@pytest.mark.parametrize("seed", [None, -1, 1.5, "0"])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        noise.pair_noise(LABELS10, 0.2, 10, seed=seed)


def test_bad_instance_inputs():
    labels = np.arange(6) % 3
    with pytest.raises(ValueError, match="inputs"):
        noise.instance_dependent_noise(labels, instance_inputs(5), 0.2, 3, seed=0)
    with pytest.raises(ValueError, match="inputs"):
        noise.instance_dependent_noise(labels, np.full((6, 2), np.nan), 0.2, 3, seed=0)
    with pytest.raises(ValueError, match="flip_rate_std"):
        noise.instance_dependent_noise(labels, instance_inputs(6), 0.2, 3, seed=0, flip_rate_std=-1)
