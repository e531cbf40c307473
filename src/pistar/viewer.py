"""A self-contained HTML page of one trajectory: per step the frame, what the model saw and said, and the action.

Frames are embedded as data URLs so the single file can be mailed or attached to an issue.
"""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import Environment

from pistar.records import Trajectory, image_to_data_url

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>pistar · {{ t.env_id }} · seed {{ t.seed }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
header { background: #1f2430; color: #eee; padding: 14px 22px; }
header h1 { font-size: 18px; margin: 0 0 6px; }
.summary span { margin-right: 18px; }
.ok { color: #2e9d4b; font-weight: 600; } .fail { color: #d0473a; font-weight: 600; }
main { padding: 16px 22px; max-width: 1200px; }
.step { display: flex; gap: 18px; background: #fff; border: 1px solid #ddd; border-radius: 8px;
        padding: 12px; margin-bottom: 12px; }
.step.invalid { border-left: 5px solid #d0473a; }
.step img { width: 256px; height: auto; image-rendering: pixelated; border-radius: 4px; flex: none; }
.body { flex: 1; min-width: 0; }
.body h2 { font-size: 15px; margin: 0 0 6px; }
pre { white-space: pre-wrap; word-break: break-word; background: #f2f2ef; padding: 8px; border-radius: 4px;
      margin: 4px 0 8px; max-height: 260px; overflow: auto; font-size: 12.5px; }
.label { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: #777; }
.action { font-weight: 600; color: #1f5fbf; }
.error { color: #d0473a; }
.meta { color: #777; font-size: 12px; }
</style></head><body>
<header><h1>{{ t.env_id }} · seed {{ t.seed }} · {{ t.agent }}</h1>
<div class="summary">
<span class="{{ 'ok' if t.success else 'fail' }}">{{ 'success' if t.success else 'failure' }}</span>
<span>{{ s.steps }} steps</span><span>return {{ '%.3f' % t.total_reward }}</span>
<span>valid actions {{ '%.0f' % (100 * s.valid_action_rate) }}%</span>
<span>tokens {{ s.tokens_in }} in / {{ s.tokens_out }} out</span><span>{{ '%.1f' % t.duration_s }} s</span>
<span>stop: {{ t.stop_reason }}</span></div>
{% if t.task %}<div>Task: {{ t.task }}</div>{% endif %}
{% if t.error %}<div class="error">Error: {{ t.error }}</div>{% endif %}
</header><main>
{% for st in steps %}
<section class="step{{ '' if st.valid else ' invalid' }}" id="step-{{ st.index }}">
{% if st.frame %}<img src="{{ st.frame }}" alt="frame of step {{ st.index }}">{% endif %}
<div class="body"><h2>Step {{ st.index }} · <span class="action">{{ st.action }}</span>
{% if st.reward %} · reward {{ '%.3f' % st.reward }}{% endif %}</h2>
<div class="label">Observation</div><pre>{{ st.observation }}</pre>
{% if st.completion is not none %}<div class="label">Model output</div><pre>{{ st.completion }}</pre>{% endif %}
{% if st.result %}<div class="label">Result</div><pre>{{ st.result }}</pre>{% endif %}
{% if st.error %}<div class="error">{{ st.error_kind }}: {{ st.error }}</div>{% endif %}
<div class="meta">agent {{ '%.2f' % st.agent_s }} s · env {{ '%.3f' % st.env_s }} s{{ st.tokens }}</div>
</div></section>
{% endfor %}
{% if final %}<section class="step" id="final">{% if final.frame %}<img src="{{ final.frame }}" alt="final frame">
{% endif %}<div class="body"><h2>Final observation</h2><pre>{{ final.observation }}</pre></div></section>{% endif %}
</main></body></html>
"""


def render_html(traj: Trajectory, base: Path | None = None) -> str:
    """The page as a string; `base` resolves image paths of a loaded trajectory."""

    def frame(images: list) -> str | None:
        if not images:
            return None
        img = images[-1]
        if isinstance(img, str) and base is not None and not Path(img).is_absolute():
            img = str(base / img)
        return image_to_data_url(img)

    steps = []
    for st in traj.steps:
        call = st.calls[-1] if st.calls else None
        tokens = f" · tokens {call.prompt_tokens} in / {call.completion_tokens} out" if call else ""
        steps.append(
            {
                "index": st.index,
                "valid": st.valid,
                "frame": frame(st.observation.images),
                "observation": st.observation.text,
                "completion": _pretty(call.completion) if call else None,
                "action": st.action.label() if st.action else "(invalid)",
                "result": st.result,
                "reward": st.reward,
                "error": st.error,
                "error_kind": st.error_kind,
                "agent_s": st.agent_s,
                "env_s": st.env_s,
                "tokens": tokens,
            }
        )
    final = None
    if traj.final_observation is not None:
        final = {"frame": frame(traj.final_observation.images), "observation": traj.final_observation.text}
    env = Environment(autoescape=True)
    return env.from_string(_TEMPLATE).render(t=traj, s=traj.summary(), steps=steps, final=final)


def write_html(traj: Trajectory, path: str | Path, base: Path | None = None) -> Path:
    path = Path(path)
    path.write_text(render_html(traj, base))
    return path


def _pretty(text: str) -> str:
    """Indent JSON output for reading; leave anything else as the model wrote it."""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text if len(text) < 5000 else text[:5000] + f"\n… ({len(text)} characters)"


__all__ = ["render_html", "write_html"]
