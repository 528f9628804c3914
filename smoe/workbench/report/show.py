"""`smoe show RUN_DIR [--text "any sentence"] [--out DIR]`: the routing pictures of one trained run (its latest
checkpoint on its probe set, `workbench.report.routing_plots`), and of a user's text for text tasks, as PNG files and a
small self-contained index.html (default DIR: RUN_DIR/show)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smoe.workbench.document import Heading, Image, Text, render_html, render_markdown
from smoe.workbench.measure.probe import read_trace, route_probe
from smoe.workbench.report.plots import save_figure
from smoe.workbench.report.routing_plots import picture_set
from smoe.workbench.run.routing_view import routing_view, text_samples
from smoe.workbench.run.runner import load_run
from smoe.workbench.train.run_folder import make_folder


@dataclass
class ShowFiles:
    html: Path
    pictures: list[Path]


def show_run(run_dir: str | Path, text: str | None = None, out: str | Path | None = None,
             device: str | None = None) -> ShowFiles:
    """Draw every routing picture of the run in run_dir into out (PNG + index.html); with text (text tasks), the
    text-by-expert picture and the weight heatmap show that text instead of the probe samples."""
    run, setup, step = load_run(run_dir, device)
    if setup.probe is None:
        raise ValueError(f"the run in {run_dir} has no probe set (data.probe_tokens=0): nothing to show")
    probed = route_probe(setup.model, setup.probe)
    head = {"step": step, "task": run.task, "router": run.router}
    view = routing_view(setup.probe, probed, read_trace(run_dir), head)
    source = "its probe set"
    if text is not None:
        view.update(text_samples(setup.model, setup.probe, text))
        source = "the given text (text and weight pictures) and its probe set"
    out = make_folder(out if out is not None else Path(run_dir) / "show")
    pictures = picture_set({run.router: view}, what=f"{run.router}, seed {run.seed}, step {step}")
    title = f"Routing of {run.router} on {run.task}"
    blocks = [Heading(title, 1), Text(f"Run {run_dir} at step {step} (seed {run.seed}), routing {source}.")]
    for picture in pictures:
        path = out / f"{picture.stem}.png"
        save_figure(picture.figure, path)
        blocks += [Heading(picture.title, 3), Image(path.relative_to(out), picture.caption)]
    (out / "index.md").write_text(render_markdown(blocks), encoding="utf-8")
    html = out / "index.html"
    html.write_text(render_html(blocks, title, out), encoding="utf-8")
    return ShowFiles(html=html, pictures=[out / f"{p.stem}.png" for p in pictures])
