"""What `asvp profile` measured (ProfileResult, one ModelProfile per model) and how it reads: summary lines,
strict JSON, the report section with its latency figure."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from asvp.runtime.evaluation.report import Section, fmt, jsonable, md_table, new_figure


@dataclass
class ModelProfile:
    """One model's timing (statistics and every timed sample) and memory."""

    name: str  # "clean" or "defended"
    path: str
    provider: str  # what actually ran it (ONNX Runtime provider, or TensorRT version)
    stats: dict
    samples_ms: list
    peak_rss_mb: float | None
    device_memory_mb: float | None = None


@dataclass
class ProfileResult:
    """A profile run: the settings, each model's ModelProfile and, for two models, the defended/clean ratios."""

    backend: str
    shape: list
    warmup: int
    iters: int
    interleaved: bool
    models: list  # [ModelProfile]
    ratio: dict = field(default_factory=dict)  # defended / clean
    memory_method: str = ""
    timer: str = "polygraphy last_inference_time"
    threads: int | None = None  # ONNX Runtime intra-op threads (None: all CPUs)
    report_dir: str | None = None
    precision: str = "fp32"  # fp16/bf16: the models converted to it (runtime/engines/reduced.py)

    def model(self, name: str) -> ModelProfile | None:
        return next((m for m in self.models if m.name == name), None)

    def to_dict(self) -> dict:
        """Strict-JSON-ready (non-finite floats as "inf"/"nan" strings)."""
        return jsonable(asdict(self))

    def summary_lines(self) -> list[str]:
        ran = ", ".join(sorted({m.provider for m in self.models}))
        thr = f", {self.threads} intra-op thread(s)" if self.threads else ""
        thr += f", {self.precision}" if self.precision != "fp32" else ""
        lines = [f"backend {self.backend} ({ran}){thr}, shape {'x'.join(map(str, self.shape))}, {self.warmup} warm-up + "
                 f"{self.iters} timed iteration(s){', interleaved' if self.interleaved else ''}"]
        for m in self.models:
            s = m.stats
            dev = f", device {fmt(m.device_memory_mb, '.1f')} MiB" if m.device_memory_mb is not None else ""
            lines.append(f"{m.name:9} p50 {fmt(s['p50_ms'])} ms  p90 {fmt(s['p90_ms'])}  p99 {fmt(s['p99_ms'])}  "
                         f"mean {fmt(s['mean_ms'])} ms  {fmt(s['throughput_ips'], '.1f')} img/s  "
                         f"peak RSS {fmt(m.peak_rss_mb, '.1f')} MiB{dev}")
        if self.ratio:
            lines.append(f"defended/clean: p50 x{fmt(self.ratio['p50'])}, mean x{fmt(self.ratio['mean'])}, "
                         f"median of paired ratios x{fmt(self.ratio['paired_median'])}")
        if self.report_dir:
            lines.append(f"report: {self.report_dir}")
        return lines

    def to_section(self):
        rows = []
        for m in self.models:
            s = m.stats
            rows.append([m.name, fmt(s["p50_ms"]), fmt(s["p90_ms"]), fmt(s["p99_ms"]), fmt(s["mean_ms"]),
                         fmt(s["std_ms"]), fmt(s["throughput_ips"], ".1f"), fmt(m.peak_rss_mb, ".1f"),
                         fmt(m.device_memory_mb, ".1f")])
        ran = ", ".join(sorted({m.provider for m in self.models}))
        md = (f"Backend `{self.backend}` (ran on {ran}), input shape {'x'.join(map(str, self.shape))}, {self.warmup} warm-up and "
              f"{self.iters} timed iterations per model"
              + (", clean and defended interleaved (alternating order)" if self.interleaved else "")
              + f". Latency: {self.timer}. Peak memory: growth of peak RSS while loading and running each model "
              f"({self.memory_method}).\n\n"
              + md_table(["model", "p50 (ms)", "p90 (ms)", "p99 (ms)", "mean (ms)", "std (ms)", "images/s",
                          "peak RSS (MiB)", "device mem (MiB)"], rows))
        if self.ratio:
            md += "\n" + md_table(["defended / clean", "ratio"], [
                ["p50", fmt(self.ratio["p50"])], ["mean", fmt(self.ratio["mean"])],
                ["median of per-iteration ratios", fmt(self.ratio["paired_median"])]])
        data = self.to_dict()
        data.pop("report_dir", None)
        return Section("Profile: latency and memory", data, md, {"latency": self.latency_figure()})

    def latency_figure(self):
        fig = new_figure(8.0, 3.4)
        ax1, ax2 = fig.subplots(1, 2)
        colors = {"clean": "#4c72b0", "defended": "#dd8452"}
        data = [np.asarray(m.samples_ms) for m in self.models]
        lo = min(float(d.min()) for d in data)
        hi = max(float(d.max()) for d in data)
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 30)
        for m, d in zip(self.models, data):
            ax1.hist(d, bins=bins, alpha=0.6, label=f"{m.name} (p50 {m.stats['p50_ms']:.2f} ms)",
                     color=colors.get(m.name))
        ax1.set_xlabel("latency (ms)")
        ax1.set_ylabel("iterations")
        ax1.legend(fontsize=8)
        ax1.set_title("Latency distribution", fontsize=9)
        ax2.boxplot(data, tick_labels=[m.name for m in self.models], showfliers=True)
        ax2.set_ylabel("latency (ms)")
        ax2.set_title("Latency (box: quartiles, whiskers 1.5 IQR)", fontsize=9)
        for ax in (ax1, ax2):
            ax.grid(True, alpha=0.3)
        sfx = f", defended/clean p50 x{self.ratio['p50']:.3f}" if self.ratio else ""
        fig.suptitle(f"{self.backend}, {'x'.join(map(str, self.shape))}{sfx}", fontsize=10)
        return fig
