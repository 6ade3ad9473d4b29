"""The lecture's three claims, checked with the real training code on 1-D mixtures.

a. For a fixed G, the best D is D*(x) = P_data(x) / (P_data(x) + P_G(x)): P_G is fixed to a
   known mixture (an exact sampler with no trainable weights, so ``GAN.train_step`` updates D
   alone), D is trained to convergence, and D(x) is compared with D*(x) on a grid.
b. max_D V(G, D) = -2 log 2 + 2 JSD(P_data || P_G): the trained D's V, integrated exactly on the
   grid, against the JSD integrated numerically, for pairs from nearly disjoint to identical.
c. The minimax generator loss log(1 - D(G(z))) saturates where the non-saturating
   -log D(G(z)) does not: their gradients with respect to G's output over D(G(z)) in (0, 1),
   and both losses' training curves from the same initial G on the same data.

``check(plugins, ...)`` returns ``Results``; ``write_report`` writes a Markdown report and PNG
plots of them; ``run`` does both and logs them to MLflow, as ``ganflow theory`` does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import integrate

from ganflow import noise
from ganflow.mixture import Mixture, jsd, kde_jsd
from ganflow.step import GENERATOR, LOG_4, Step, as_step_loss
DEFAULT_DATA = {"means": [-2.0, 2.0], "stds": [0.5, 0.5], "weights": [0.5, 0.5]}
# (name, P_G), from nearly disjoint to identical; claim a is judged on DEFAULT_PAIR.
DEFAULT_PAIRS = [
    ("nearly disjoint", {"means": [6.0], "stds": [0.5]}),
    ("one mode", {"means": [2.0], "stds": [0.5]}),
    ("broad", {"means": [0.0], "stds": [2.0]}),
    ("close", {"means": [-1.8, 2.1], "stds": [0.6, 0.45], "weights": [0.45, 0.55]}),
    ("identical", DEFAULT_DATA),
]
DEFAULT_PAIR = 2
OPTIMAL_D_TOLERANCE = 0.03  # claim a: weighted mean |D - D*|
VALUE_TOLERANCE = 0.02  # claim b: |V - (-2 log 2 + 2 JSD)| in nats
MAX_ERROR_SUPPORT = 0.01  # max |D - D*| is taken where (p + q) / 2 >= 1% of its peak
DISCRIMINATOR = "mlp:64,64"
CURVE_ARCH = "mlp:64,64"
CURVE_BATCH = 128
CURVE_LR = 0.05
CURVE_PRETRAIN = 300


def _train_discriminator(plugins, p_data: Mixture, p_g: Mixture, steps: int, batch: int,
                         seed: int):
    """D trained alone against the fixed P_G, through GAN.fit; returns the discriminator."""
    import keras

    from ganflow.data import training_pipeline
    from ganflow.gan import GAN
    from ganflow.types import DataSource

    keras.utils.set_random_seed(seed)
    source = DataSource.from_arrays(p_data.sample(steps * batch // 4 + batch, seed=seed))
    _, arch = plugins.architecture(DISCRIMINATOR)
    discriminator = arch.build_discriminator(source.spec)
    generator = p_g.sampler(name="fixed_p_g")  # no trainable weights: G stays P_G
    gan = GAN(generator, discriminator, latent_dim=2, seed=seed)
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=steps, alpha=0.01)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(schedule),
        g_optimizer=keras.optimizers.Adam(1e-3),
        loss=plugins.losses.get("minimax").obj,
    )
    pipeline = training_pipeline(source, batch, seed)
    gan.fit(pipeline, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return discriminator


def _logits(discriminator, x: np.ndarray) -> np.ndarray:
    import keras

    out = discriminator(x.astype(np.float32)[:, None], training=False)
    return keras.ops.convert_to_numpy(out)[:, 0].astype(np.float64)


@dataclass
class PairResult:
    """Claims a and b for one (P_data, P_G) pair; ``curve`` holds the arrays the plots use."""

    name: str
    p_data: Mixture
    p_g: Mixture
    value: float  # V of the trained D, integrated against the densities
    jsd: float
    max_value: float  # -2 log 2 + 2 JSD
    gap: float  # value - max_value
    d_mean_abs_error: float  # |D - D*| weighted by (P_data + P_G) / 2
    d_max_abs_error: float  # where (P_data + P_G) / 2 is at least 1% of its peak
    curve: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "p_data": self.p_data.to_dict(), "p_g": self.p_g.to_dict(),
                "value": self.value, "jsd": self.jsd, "max_value": self.max_value,
                "gap": self.gap, "d_mean_abs_error": self.d_mean_abs_error,
                "d_max_abs_error": self.d_max_abs_error}


def measure_pair(plugins, p_data: Mixture, p_g: Mixture, steps: int = 3000, batch: int = 512,
                 seed: int = 0, name: str = "") -> PairResult:
    """Claims a and b for one pair: V of the trained D, the JSD, and D against D*."""
    discriminator = _train_discriminator(plugins, p_data, p_g, steps, batch, seed)
    x = np.unique(np.concatenate([p_data.grid(), p_g.grid()]))
    p, q = p_data.prob(x), p_g.prob(x)
    s = _logits(discriminator, x)
    d = 1.0 / (1.0 + np.exp(-s))
    d_star = p / (p + q)
    # V = E_data[log D] + E_G[log(1 - D)], with log D = -softplus(-s), log(1-D) = -softplus(s).
    value = integrate.simpson(-p * np.logaddexp(0, -s) - q * np.logaddexp(0, s), x=x)
    divergence = jsd(p, q, x)
    bound = -LOG_4 + 2.0 * divergence
    weight = 0.5 * (p + q)
    error = np.abs(d - d_star)
    support = weight >= MAX_ERROR_SUPPORT * weight.max()
    return PairResult(
        name=name, p_data=p_data, p_g=p_g, value=float(value), jsd=float(divergence),
        max_value=float(bound), gap=float(value - bound),
        d_mean_abs_error=float(integrate.simpson(error * weight, x=x)),
        d_max_abs_error=float(error[support].max()),
        curve={"x": x, "p": p, "q": q, "d": d, "d_star": d_star},
    )


def generator_gradients(plugins, points: int = 99) -> dict[str, Any]:
    """|d loss / d G(z)| of each generator loss over D(G(z)) in (0, 1).

    D is the logistic discriminator D(x) = sigmoid(x), so D(G(z)) sweeps (0, 1) as G's output
    x does, and the gradient with respect to x is the loss's own factor: D for minimax,
    1 - D for non-saturating.
    """
    import tensorflow as tf

    d = np.linspace(0.01, 0.99, points)
    x = tf.constant(np.log(d / (1 - d)), dtype=tf.float32)[:, None]  # logit(D) = G's output
    out = {"d_fake": d.tolist()}
    for name in ("minimax", "non-saturating"):
        loss = as_step_loss(plugins.losses.get(name).obj)
        with tf.GradientTape() as tape:
            tape.watch(x)
            step = Step.from_logits(fake_logits=x, update=GENERATOR)
            total = loss.g_loss(step) * points  # per-sample losses, summed
        out[name] = np.abs(tape.gradient(total, x).numpy()[:, 0]).astype(float).tolist()
    return out


def training_curves(plugins, p_data: Mixture, steps: int = 1000, every: int = 50,
                    seed: int = 0, pretrain: int = CURVE_PRETRAIN) -> dict[str, Any]:
    """JSD(P_data || KDE of P_G) during training, minimax against non-saturating.

    Both start from the same state, the lecture's "beginning": the same initial G, and the same
    D trained for ``pretrain`` steps against it, so D rejects G's samples. Then both train on
    the same data with plain SGD, the lecture's gradient steps (Adam would rescale the
    vanishing minimax gradient and hide much of the difference).
    """
    import keras

    from ganflow.data import training_pipeline
    from ganflow.gan import GAN
    from ganflow.types import DataSource

    source = DataSource.from_arrays(p_data.sample(25_600, seed=seed))
    z = noise.latent(5000, 1, seed, "theory")
    curves: dict[str, Any] = {"steps": list(range(0, steps + 1, every))}
    for name in ("minimax", "non-saturating"):
        keras.utils.set_random_seed(seed)
        _, arch = plugins.architecture(CURVE_ARCH)
        generator = arch.build_generator(source.spec, 1)
        discriminator = arch.build_discriminator(source.spec)
        loss = plugins.losses.get(name).obj
        pipeline = training_pipeline(source, CURVE_BATCH, seed)
        generator.trainable = False  # the beginning: D learns to reject the initial G
        warmup = GAN(generator, discriminator, latent_dim=1, seed=seed)
        warmup.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.SGD(),
                       loss=loss)
        warmup.fit(pipeline, epochs=1, steps_per_epoch=pretrain, verbose=0, shuffle=False)
        generator.trainable = True
        curves[f"{name}_start"] = _start_state(generator, discriminator, loss, z)
        gan = GAN(generator, discriminator, latent_dim=1, seed=seed + 1)
        gan.compile(d_optimizer=keras.optimizers.SGD(CURVE_LR),
                    g_optimizer=keras.optimizers.SGD(CURVE_LR), loss=loss)
        jsds, d_fake = [kde_jsd(p_data, _generate(gan, z))], []
        for _ in range(steps // every):
            history = gan.fit(pipeline, epochs=1, steps_per_epoch=every, verbose=0,
                              shuffle=False)
            jsds.append(kde_jsd(p_data, _generate(gan, z)))
            d_fake.append(float(history.history["d_fake"][-1]))
        curves[name] = jsds
        curves[f"{name}_d_fake"] = d_fake
    return curves


def _start_state(generator, discriminator, loss, z) -> dict[str, float]:
    """Mean D(G(z)) and mean |d loss / d G(z)| per sample, on the real networks."""
    import tensorflow as tf

    fake = tf.constant(generator(z, training=False))
    with tf.GradientTape() as tape:
        tape.watch(fake)
        logits = discriminator(fake, training=False)
        step = Step.from_logits(fake_logits=logits, update=GENERATOR)
        total = as_step_loss(loss).g_loss(step) * len(z)
    gradient = tape.gradient(total, fake).numpy()
    return {"d_fake": float(tf.reduce_mean(tf.sigmoid(logits))),
            "gradient": float(np.mean(np.abs(gradient)))}


def _generate(gan, z):
    import keras

    return keras.ops.convert_to_numpy(gan.generator(z, training=False))[:, 0]


@dataclass
class OptimalD:
    """Claim a: a D trained against a fixed P_G matches D* on the default pair."""

    pair: str
    d_mean_abs_error: float
    d_max_abs_error: float
    tolerance: float
    holds: bool


@dataclass
class MaxValueIsJSD:
    """Claim b: V of the trained D equals -2 log 2 + 2 JSD on every pair."""

    max_abs_gap: float
    tolerance: float
    holds: bool


@dataclass
class NonSaturating:
    """Claim c: the minimax generator loss saturates where the non-saturating one does not."""

    d_fake: float
    minimax_gradient: float
    non_saturating_gradient: float
    start_d_fake: float
    start_minimax_gradient: float
    start_non_saturating_gradient: float
    early_step: int
    minimax_jsd_early: float
    non_saturating_jsd_early: float
    minimax_jsd_final: float
    non_saturating_jsd_final: float
    holds: bool


@dataclass
class Results:
    """Everything ``check`` measured; ``gradients`` and ``curves`` are what claim c plots."""

    pairs: list[PairResult]
    optimal_d: OptimalD
    max_value_is_jsd: MaxValueIsJSD
    non_saturating: NonSaturating
    settings: dict[str, Any]
    gradients: dict[str, list[float]] = field(repr=False, default_factory=dict)
    curves: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def claims(self) -> dict[str, Any]:
        return {"optimal_d": self.optimal_d, "max_value_is_jsd": self.max_value_is_jsd,
                "non_saturating": self.non_saturating}

    @property
    def holds(self) -> bool:
        return all(claim.holds for claim in self.claims.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the pairs, the claims and the settings (no plotting arrays)."""
        return {"pairs": [p.to_dict() for p in self.pairs],
                "claims": {name: asdict(claim) for name, claim in self.claims.items()},
                "settings": self.settings}

    def metrics(self) -> dict[str, float]:
        """Every number, flat, as MLflow metrics: ``optimal_d/gap``, ``pair0/jsd``, ..."""
        out = {f"{name}/{key}": float(value) for name, claim in self.claims.items()
               for key, value in asdict(claim).items()
               if isinstance(value, (int, float)) and not isinstance(value, str)}
        for i, pair in enumerate(self.pairs):
            out.update({f"pair{i}/{key}": getattr(pair, key) for key in
                        ("value", "jsd", "max_value", "gap", "d_mean_abs_error",
                         "d_max_abs_error")})
        return out


def check(plugins, pairs=None, steps: int = 3000, curve_steps: int = 1000,
          seed: int = 0) -> Results:
    """Measure claims a, b and c. ``pairs``: [(name, P_data, P_G)] as Mixtures, or the defaults."""
    if pairs is None:
        data = Mixture.from_dict(DEFAULT_DATA)
        pairs = [(name, data, Mixture.from_dict(g)) for name, g in DEFAULT_PAIRS]
        default = DEFAULT_PAIR
    else:
        default = 0
    measured = []
    for name, p_data, p_g in pairs:
        if p_data.dim != 1 or p_g.dim != 1:
            raise ValueError("the theory checks take 1-D mixtures")
        measured.append(measure_pair(plugins, p_data, p_g, steps, seed=seed, name=name))
    gaps = [abs(r.gap) for r in measured]
    a = measured[default]
    gradients = generator_gradients(plugins)
    curves = training_curves(plugins, pairs[default][1], steps=curve_steps, seed=seed)
    at = gradients["d_fake"].index(min(gradients["d_fake"]))
    early = 2  # the second checkpoint
    mm_start, ns_start = curves["minimax_start"], curves["non-saturating_start"]
    return Results(
        pairs=measured,
        optimal_d=OptimalD(a.name, a.d_mean_abs_error, a.d_max_abs_error, OPTIMAL_D_TOLERANCE,
                           bool(a.d_mean_abs_error <= OPTIMAL_D_TOLERANCE)),
        max_value_is_jsd=MaxValueIsJSD(max(gaps), VALUE_TOLERANCE,
                                       bool(max(gaps) <= VALUE_TOLERANCE)),
        non_saturating=NonSaturating(
            d_fake=gradients["d_fake"][at],
            minimax_gradient=gradients["minimax"][at],
            non_saturating_gradient=gradients["non-saturating"][at],
            start_d_fake=mm_start["d_fake"],
            start_minimax_gradient=mm_start["gradient"],
            start_non_saturating_gradient=ns_start["gradient"],
            early_step=curves["steps"][early],
            minimax_jsd_early=curves["minimax"][early],
            non_saturating_jsd_early=curves["non-saturating"][early],
            minimax_jsd_final=curves["minimax"][-1],
            non_saturating_jsd_final=curves["non-saturating"][-1],
            holds=bool(gradients["minimax"][at] < gradients["non-saturating"][at]
                       and mm_start["gradient"] < ns_start["gradient"]),
        ),
        settings={"discriminator": DISCRIMINATOR, "d_training_steps": steps,
                  "curve_arch": CURVE_ARCH, "curve_steps": curve_steps,
                  "curve_pretrain_steps": CURVE_PRETRAIN, "curve_sgd_lr": CURVE_LR,
                  "seed": seed},
        gradients=gradients,
        curves=curves,
    )


def run(plugins, pairs=None, steps: int = 3000, curve_steps: int = 1000, seed: int = 0,
        output_dir="ganflow-theory", experiment: str = "ganflow-theory"):
    """``check``, then the report and ``results.json`` in ``output_dir``, all logged as one
    MLflow run in ``experiment``. Returns (results, report path, run id)."""
    from ganflow import tracking

    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".ganflow-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        from ganflow.errors import UsageError

        raise UsageError(f"--output-dir {output_dir}: cannot write there ({exc.strerror})") \
            from None
    results = check(plugins, pairs, steps=steps, curve_steps=curve_steps, seed=seed)
    files = write_report(results, out)
    summary = out / "results.json"
    summary.write_text(json.dumps(results.to_dict(), indent=2))
    params = {**results.settings,
              **{f"pair{i}": json.dumps({"name": p.name, "p_data": p.p_data.to_dict(),
                                         "p_g": p.p_g.to_dict()})
                 for i, p in enumerate(results.pairs)}}
    run_id = tracking.log_report(experiment, "theory", params, results.metrics(),
                                 [*files, summary])
    return results, files[0], run_id


def write_report(results: Results, output_dir) -> list[Path]:
    """theory.md and four PNGs in ``output_dir``; returns their paths."""
    from ganflow.toy import _figure

    plt = _figure()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    a = next(r for r in results.pairs if r.name == results.optimal_d.pair)
    c = a.curve
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(c["x"], c["p"] / c["p"].max(), color="tab:blue", alpha=0.4, label="P_data (scaled)")
    ax.plot(c["x"], c["q"] / c["q"].max(), color="tab:orange", alpha=0.4, label="P_G (scaled)")
    ax.plot(c["x"], c["d_star"], color="black", lw=2, label="D* = P_data / (P_data + P_G)")
    ax.plot(c["x"], c["d"], color="tab:red", ls="--", lw=2, label="trained D")
    shown = np.flatnonzero(c["p"] + c["q"] >= 1e-3 * (c["p"] + c["q"]).max())
    ax.set_xlim(c["x"][shown[0]], c["x"][shown[-1]])
    ax.set_xlabel("x")
    ax.set_title(f"a. optimal D ({a.name}): weighted mean |D - D*| = "
                 f"{results.optimal_d.d_mean_abs_error:.4f}", fontsize=9)
    ax.legend(fontsize=8)
    paths.append(_save(fig, plt, out / "optimal_d.png"))

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    bounds = [r.max_value for r in results.pairs]
    values = [r.value for r in results.pairs]
    ax.plot([-LOG_4, 0], [-LOG_4, 0], color="gray", lw=1, label="V = -2 log 2 + 2 JSD")
    ax.scatter(bounds, values, color="tab:red", zorder=3, label="trained D")
    for r in results.pairs:
        ax.annotate(r.name, (r.max_value, r.value), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    ax.set_xlabel("-2 log 2 + 2 JSD(P_data || P_G)  (numerical integration)")
    ax.set_ylabel("V(G, D) of the trained D")
    ax.set_title(f"b. max_D V: largest |gap| {results.max_value_is_jsd.max_abs_gap:.4f} "
                 "nats", fontsize=9)
    ax.legend(fontsize=8)
    paths.append(_save(fig, plt, out / "value_vs_jsd.png"))

    g = results.gradients
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(g["d_fake"], g["minimax"], label="minimax: log(1 - D(G(z)))")
    ax.plot(g["d_fake"], g["non-saturating"], label="non-saturating: -log D(G(z))")
    ax.set_xlabel("D(G(z))")
    ax.set_ylabel("|d loss / d G(z)|  (D(x) = sigmoid(x))")
    ax.set_title("c. generator gradients: minimax vanishes where D rejects the fakes", fontsize=9)
    ax.legend(fontsize=8)
    paths.append(_save(fig, plt, out / "generator_gradients.png"))

    k = results.curves
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(k["steps"], k["minimax"], marker="o", ms=3, label="minimax")
    ax.plot(k["steps"], k["non-saturating"], marker="o", ms=3, label="non-saturating")
    ax.set_xlabel("generator updates")
    ax.set_ylabel("JSD(P_data || KDE of P_G)")
    ax.set_title("c. training from the same initial G on the same data", fontsize=9)
    ax.legend(fontsize=8)
    paths.append(_save(fig, plt, out / "training_curves.png"))

    report = out / "theory.md"
    report.write_text(report_markdown(results))
    return [report, *paths]


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _verdict(holds: bool) -> str:
    return "holds" if holds else "DOES NOT HOLD"


def report_markdown(results: Results) -> str:
    a, b, c = results.optimal_d, results.max_value_is_jsd, results.non_saturating
    lines = [
        "# GAN theory, measured",
        "",
        "| pair | JSD | -2 log 2 + 2 JSD | V of trained D | gap | mean abs D - D* "
        "| max abs D - D* |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results.pairs:
        lines.append(f"| {r.name} | {r.jsd:.4f} | {r.max_value:.4f} | {r.value:.4f}"
                     f" | {r.gap:+.4f} | {r.d_mean_abs_error:.4f} | {r.d_max_abs_error:.4f} |")
    lines += [
        "",
        f"- a. Optimal D ({a.pair}): weighted mean |D - D*| = {a.d_mean_abs_error:.4f} "
        f"(tolerance {a.tolerance}), max {a.d_max_abs_error:.4f}: {_verdict(a.holds)}.",
        f"- b. max_D V = -2 log 2 + 2 JSD: largest |gap| = {b.max_abs_gap:.4f} nats "
        f"(tolerance {b.tolerance}): {_verdict(b.holds)}.",
        f"- c. At D(G(z)) = {c.d_fake:.2f} the minimax gradient is "
        f"{c.minimax_gradient:.3f}, the non-saturating one {c.non_saturating_gradient:.3f}"
        f"; on the real networks at the start (D trained against the initial G, mean "
        f"D(G(z)) = {c.start_d_fake:.4f}) the mean gradients are "
        f"{c.start_minimax_gradient:.4f} and {c.start_non_saturating_gradient:.4f}"
        f": {_verdict(c.holds)}. After {c.early_step} generator updates the JSD is "
        f"{c.minimax_jsd_early:.4f} (minimax) against {c.non_saturating_jsd_early:.4f} "
        f"(non-saturating); at the end {c.minimax_jsd_final:.4f} against "
        f"{c.non_saturating_jsd_final:.4f}.",
        "",
        "![optimal D](optimal_d.png)",
        "![V against JSD](value_vs_jsd.png)",
        "![generator gradients](generator_gradients.png)",
        "![training curves](training_curves.png)",
        "",
    ]
    return "\n".join(lines)
