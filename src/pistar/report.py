"""`pistar report RUN`: one HTML page per run — what was run, the numbers per task with their confidence
intervals, plots, and every episode with its last frame and a link to its step-by-step page.

Plots are PNGs embedded as data URLs; episode pictures are the run's own frame files, linked relatively, so the
report stays small however many episodes the run has.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display here, and none needed
import matplotlib.pyplot as plt  # noqa: E402
from jinja2 import Environment  # noqa: E402

from pistar.evaluate import load_run  # noqa: E402
from pistar.metrics import by_task  # noqa: E402

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pistar report · {{ name }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
header { background: #1f2430; color: #eee; padding: 14px 22px; } header h1 { font-size: 19px; margin: 0 0 4px; }
main { padding: 16px 22px; max-width: 1300px; }
table { border-collapse: collapse; background: #fff; margin: 8px 0 18px; }
th, td { border: 1px solid #ddd; padding: 4px 9px; text-align: right; white-space: nowrap; } th { background: #eee; }
td:first-child, th:first-child { text-align: left; } tr.overall td { font-weight: 600; background: #f3f6fb; }
.ok { color: #2e9d4b; font-weight: 600; } .fail { color: #d0473a; font-weight: 600; } .err { color: #b86e00; }
.plots img { max-width: 48%; vertical-align: top; background: #fff; border: 1px solid #ddd; border-radius: 6px;
             margin: 0 8px 8px 0; }
.thumb { width: 72px; height: auto; image-rendering: pixelated; vertical-align: middle; }
pre { background: #fff; border: 1px solid #ddd; padding: 8px; font-size: 12px; overflow: auto; }
</style></head><body>
<header><h1>{{ name }}</h1><div>{{ agent }} · {{ rows|length }} episodes · model {{ model }}</div></header>
<main>
<h2>Summary</h2>
<table id="summary"><tr><th>task</th><th>episodes</th><th>success</th><th>95% CI</th><th>progress</th>
<th>return</th><th>steps</th><th>valid actions</th><th>tool-call validity</th><th>loops</th><th>tokens in</th>
<th>tokens out</th><th>latency/step</th><th>errors</th></tr>
{% for task, m in tasks.items() %}<tr class="{{ 'overall' if task == 'overall' else '' }}"><td>{{ task }}</td>
<td>{{ m.scored }}</td><td>{{ '%.0f' % (100 * m.success_rate) }}%</td>
<td>{{ '%.0f' % (100 * m.ci_low) }}–{{ '%.0f' % (100 * m.ci_high) }}%</td><td>{{ '%.2f' % m.progress }}</td>
<td>{{ '%.2f' % m.reward }}</td><td>{{ '%.1f' % m.steps }}</td><td>{{ '%.1f' % (100 * m.valid_action_rate) }}%</td>
<td>{% if m.tool_calls %}{{ '%.0f' % (100 * m.tool_call_validity) }}% of {{ m.tool_calls }}
{%- else %}–{% endif %}</td><td>{{ '%.0f' % (100 * m.loop_rate) }}%</td>
<td>{{ '%.0f' % m.tokens_in }}</td><td>{{ '%.0f' % m.tokens_out }}</td><td>{{ '%.2f' % m.latency_s }} s</td>
<td class="{{ 'err' if m.errors else '' }}">{{ m.errors }}</td></tr>{% endfor %}
</table>
<h2>Plots</h2><div class="plots">{% for title, src in plots %}<img src="{{ src }}" alt="{{ title }}">{% endfor %}</div>
<h2>Episodes</h2>
<table id="episodes"><tr><th>task</th><th>seed</th><th>outcome</th><th>last frame</th><th>steps</th>
<th>valid actions</th><th>tokens in/out</th><th>stop</th><th>error</th></tr>
{% for r in rows %}<tr><td>{{ r.env_id }}</td><td><a href="{{ r.path }}/index.html">{{ r.seed }}</a></td>
<td class="{{ 'ok' if r.success else 'fail' }}">{{ 'success' if r.success else 'failure' }}</td>
<td>{% if r.thumb %}<a href="{{ r.path }}/index.html"><img class="thumb" src="{{ r.thumb }}"
alt="{{ r.env_id }} seed {{ r.seed }}"></a>{% endif %}</td><td>{{ r.steps }}</td>
<td>{{ '%.0f' % (100 * r.valid_action_rate) }}%</td><td>{{ r.tokens_in }}/{{ r.tokens_out }}</td>
<td>{{ r.stop_reason }}</td><td class="err">{{ r.error or '' }}</td></tr>{% endfor %}
</table>
<h2>Configuration</h2><pre>{{ config }}</pre>
</main></body></html>
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(tasks: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    names = [t for t in tasks if t != "overall"]
    height = 0.5 + 0.38 * len(names)
    plots = []

    fig, ax = plt.subplots(figsize=(6.5, height))
    rates = [100 * tasks[t]["success_rate"] for t in names]
    low = [max(0.0, r - 100 * tasks[t]["ci_low"]) for r, t in zip(rates, names, strict=True)]
    high = [max(0.0, 100 * tasks[t]["ci_high"] - r) for r, t in zip(rates, names, strict=True)]
    ax.barh(names, rates, xerr=[low, high], color="#4c78a8", capsize=3)
    ax.set_xlim(0, 100)
    ax.set_xlabel("success % (95% Wilson CI)")
    ax.invert_yaxis()
    plots.append(("success per task", _png(fig)))

    fig, ax = plt.subplots(figsize=(6.5, height))
    ax.boxplot(
        [[r["steps"] for r in rows if r["env_id"] == t] or [0] for t in names],
        orientation="horizontal",
        tick_labels=names,
    )
    ax.set_xlabel("steps per episode")
    ax.invert_yaxis()
    plots.append(("steps per episode", _png(fig)))

    fig, ax = plt.subplots(figsize=(6.5, height))
    tin = [tasks[t]["tokens_in"] for t in names]
    tout = [tasks[t]["tokens_out"] for t in names]
    ax.barh(names, tin, color="#9ecae9", label="prompt")
    ax.barh(names, tout, left=tin, color="#f58518", label="completion")
    ax.set_xlabel("tokens per episode")
    ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    plots.append(("tokens per episode", _png(fig)))
    return plots


def _thumb(run: Path, row: dict[str, Any]) -> str | None:
    frames = sorted((run / row["path"] / "frames").glob("final_*.png")) or sorted(
        (run / row["path"] / "frames").glob("*.png")
    )
    return str(frames[-1].relative_to(run)) if frames else None


def write_report(run: str | Path) -> Path:
    run = Path(run)
    meta, rows = load_run(run)
    config = meta.get("config") or {}
    suite = config.get("suite", {})
    order = {task["env"]: i for i, task in enumerate(suite.get("tasks", []))}
    rows.sort(key=lambda r: (order.get(r["env_id"], len(order)), r["env_id"], r["seed"]))
    for r in rows:
        r["thumb"] = _thumb(run, r)
    tasks = by_task(rows)
    agent = config.get("agent", {})
    model = (meta.get("model") or {}).get("uri") or agent.get("model") or "-"
    html = (
        Environment(autoescape=True)
        .from_string(_TEMPLATE)
        .render(
            name=f"{suite.get('name', run.name)} · {run.name}",
            agent=agent.get("kind", "?"),
            model=model,
            rows=rows,
            tasks=tasks,
            plots=_plots(tasks, rows) if rows else [],
            config=json.dumps(
                {"config": config, "model": meta.get("model"), "versions": meta.get("versions")}, indent=1
            ),
        )
    )
    path = run / "report.html"
    path.write_text(html)
    return path
