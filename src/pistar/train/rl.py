"""Online multi-turn RL: GRPO and PPO, with rollouts through pistar's own agent loop and environments.

An iteration plays `group_size` episodes on each of `tasks_per_iter` seeds of the suite with the policy being
trained (the same LLMAgent and run_episode as `pistar eval`), then updates on every model call ("turn") of those
episodes. A turn is the exact `prompt_ids + completion_ids` the backend used; only completion tokens enter the loss,
so text written by the environment or a tool, and earlier turns shown in the prompt, get no gradient.

- GRPO: an episode's advantage is its return minus its group's mean (divided by the group's std unless
  `scale_rewards=False`), given to every token the policy wrote in that episode. A group whose returns are all
  equal teaches nothing; such groups are counted in the log, not hidden, and (`skip_equal_groups`) not trained
  on, since every advantage in them is zero (`skipped_turns`; an iteration with nothing to train logs KL as null).
- PPO: a value head on the last prompt token estimates each turn's value; advantages come from GAE over the
  turns of an episode (γ, λ), returns train the value head with a clipped loss.
- Both: the clipped ratio objective, a KL penalty to the reference policy (k3 estimator; with LoRA the reference
  is the same network with the adapter off, or the adapter as it was when training started), token-mean loss.

Every iteration appends a line to OUT/log.jsonl (reward, success, KL, entropy, clip fraction, equal groups) and
saves the adapter, the optimizer and the value head: a killed run resumes at the next iteration.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pistar.train.model import (
    TrainConfig,
    checkpoint_activations,
    embeddable,
    is_adapter,
    load_policy,
    nested,
    save_policy,
)


@dataclass
class Turn:
    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float = 0.0
    ret: float = 0.0  # PPO: the value target
    old_value: float = 0.0
    old_logp: Any = None  # tensor, when the update takes more than one optimizer step
    ref_logp: Any = None


def grpo_advantages(rewards: list[float], scale: bool = True, eps: float = 1e-6) -> list[float]:
    """Group-relative advantages: (r - mean) / std over one group (population std); all zero if all equal."""
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    if std < eps:
        return [0.0] * len(rewards)
    return [(r - mean) / std if scale else r - mean for r in rewards]


def gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """Generalised advantage estimation over the turns of one episode, which ends after the last turn."""
    advantages = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


def clipped_surrogate(logp: Any, old_logp: Any, advantage: Any, clip: float) -> tuple[Any, Any]:
    """Per-token PPO policy loss, -min(ρA, clip(ρ, 1±ε)A), and whether each token was clipped."""
    import torch

    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantage
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()


def value_loss(value: Any, old_value: Any, ret: Any, clip: float) -> Any:
    """PPO's clipped value loss: the worse of the new value's error and the clipped one's."""
    import torch

    clipped = old_value + torch.clamp(value - old_value, -clip, clip)
    return 0.5 * torch.maximum((value - ret) ** 2, (clipped - ret) ** 2)


def kl_k3(logp: Any, ref_logp: Any) -> Any:
    """Per-token KL(π‖π_ref) estimate, exp(ref - logp) - (ref - logp) - 1: unbiased and never negative."""
    import torch

    d = ref_logp - logp
    return torch.exp(d) - d - 1


def completion_logprobs(model: Any, prompt_ids: list[int], completion_ids: list[int], hidden: bool = False) -> Any:
    """Log-probs of the completion tokens under `model`, their entropies, and (for PPO) the last prompt token's
    final hidden state."""
    return batch_logprobs(model, [(prompt_ids, completion_ids)], hidden)[0]


def batch_logprobs(
    model: Any, pairs: list[tuple[list[int], list[int]]], hidden: bool = False
) -> list[tuple[Any, Any, Any]]:
    """`completion_logprobs` of several (prompt, completion) pairs in one forward pass. A pair that another one
    extends (an earlier turn of the same episode, when the prompt keeps the history) is read off that pair's row,
    so an episode of n turns costs its length, not n prompts. The rows' common prefix (system prompt, action
    space: most of an agent's prompt) runs once and its keys and values serve every row, gradient included. The LM
    head (a 151k-token vocabulary on Qwen) runs only at the positions that predict completion tokens."""
    import torch

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    body, head = causal.get_decoder(), causal.get_output_embeddings()
    device = head.weight.device
    full = [p + c for p, c in pairs]
    runs = nested(full)
    row_of = {i: r for r, run in enumerate(runs) for i in run}
    rows_full = [full[run[-1]] for run in runs]
    shared = 0
    # Activation checkpointing drops a layer's cache (its recompute would write it twice): no shared prefix then.
    checkpointed = getattr(body, "gradient_checkpointing", False) and body.training and torch.is_grad_enabled()
    if len(runs) > 1 and not checkpointed:  # each pair keeps a prompt token: its last predicts the first reply token
        limit = min(len(p) for p, _ in pairs) - 1
        while shared < limit and all(r[shared] == rows_full[0][shared] for r in rows_full):
            shared += 1
    cache = None
    if shared:
        prefix = torch.tensor([rows_full[0][:shared]], device=device)
        cache = body(input_ids=prefix, use_cache=True).cache
        cache.batch_repeat_interleave(len(runs))
    rows = [r[shared:] for r in rows_full]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), shared + width, dtype=torch.long, device=device)
    mask[:, :shared] = 1
    for i, r in enumerate(rows):  # right padding: a pad position still sees the real tokens before it
        ids[i, : len(r)] = torch.tensor(r, device=device)
        mask[i, shared : shared + len(r)] = 1
    positions = torch.arange(shared, shared + width, device=device).expand(len(rows), -1)
    states = body(
        input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=cache is not None
    ).last_hidden_state
    out = []
    for i, (prompt, completion) in enumerate(pairs):
        r = row_of[i]
        start = len(prompt) - shared  # row position of the first completion token
        end = start + len(completion)
        logp_all = torch.log_softmax(head(states[r, start - 1 : end - 1]).float(), -1)
        logp = logp_all.gather(-1, ids[r, start:end, None])[:, 0]
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        out.append((logp, entropy, states[r, start - 1] if hidden else None))
    return out


def by_prompt(turns: list[Turn], tokens: int) -> list[list[Turn]]:
    """Turns in chunks for `batch_logprobs`: rows (runs of turns that extend each other, `nested`, kept whole)
    packed up to `tokens` per chunk, a longer row alone. Sorted, so that a chunk's rows share the longest prompt
    prefix. A budget in tokens, not rows (verl's dynamic batching): a row that holds a whole episode is long."""
    full = [t.prompt_ids + t.completion_ids for t in turns]
    chunks: list[list[Turn]] = []
    used = tokens
    for run in nested(full):
        size = len(full[run[-1]])
        if used + size > tokens:
            chunks.append([])
            used = 0
        chunks[-1].extend(turns[i] for i in run)
        used += size
    return chunks


class RLTrainer:
    def __init__(self, config: TrainConfig, algo: str):
        import torch

        if algo not in ("grpo", "ppo"):
            raise ValueError(f"unknown algorithm {algo!r}: grpo or ppo")
        if not config.suite:
            raise ValueError("online RL needs the tasks it plays: set suite=NAME or suite=FILE.yaml")
        if algo == "grpo" and config.group_size < 2:
            raise ValueError("GRPO compares episodes within a group: set group_size=2 or more (4 is usual)")
        if config.rollout_model not in ("policy", "embedded") and not (
            config.rollout_model.startswith("openai:") and config.lora
        ):
            raise ValueError(
                f"rollout_model={config.rollout_model!r}: use 'policy' (the trained model in this process), "
                "'embedded' (llama.cpp, LoRA on a catalog model) or openai:BASE@URL of a vLLM server started with "
                "--enable-lora (LoRA training only)"
            )
        from pistar.suites import load_suite

        self.config, self.algo = config, algo
        self.out = Path(config.out)
        self.on_progress: Callable[[str], None] | None = None  # a short line (episode k/n, update) per event
        self.episodes = load_suite(config.suite).episodes()
        random.Random(config.seed).shuffle(self.episodes)  # tasks of every kind from the first iterations on
        start_adapter = config.model if is_adapter(config.model) else None
        resume = self.out / "checkpoint"
        if is_adapter(resume):
            config = config.model_copy(update={"model": str(resume)})
        self.model, self.tokenizer, self.base = load_policy(config)
        if config.gradient_checkpointing:  # a whole episode is one row: recompute activations instead of storing them
            checkpoint_activations(self.model)
        if config.rollout_model == "embedded" and not (hasattr(self.model, "peft_config") and embeddable(self.base)):
            raise ValueError(
                f"rollout_model=embedded needs a LoRA on a catalog model that is on disk, not {self.base!r} "
                "(pistar models list); use rollout_model=policy"
            )
        self.reference = "adapter_off"
        if start_adapter is not None and hasattr(self.model, "load_adapter"):
            # Continuing an SFT adapter: the reference is that adapter as it was, kept frozen beside the trained one.
            self.model.load_adapter(start_adapter, adapter_name="reference", is_trainable=False)
            self.model.set_adapter("default")
            self.reference = "start_adapter"
        elif not hasattr(self.model, "disable_adapter"):
            import copy

            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
            self.reference = "copy"
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.value_head = None
        if algo == "ppo":
            hidden = self.model.config.get_text_config().hidden_size
            self.value_head = torch.nn.Linear(hidden, 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
            params += list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.lr)
        self.iteration = 0
        self._served = ""  # the adapter name loaded in the rollout server
        if (self.out / "checkpoint" / "trainer.pt").exists():
            state = torch.load(self.out / "checkpoint" / "trainer.pt", weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
            if self.value_head is not None:
                self.value_head.load_state_dict(state["value_head"])
            self.iteration = state["iteration"]
            random.setstate(state["random"])

    # -- rollouts ------------------------------------------------------------------------------------------------

    def tasks(self, iteration: int) -> list[Any]:
        n = self.config.tasks_per_iter
        return [self.episodes[(iteration * n + i) % len(self.episodes)] for i in range(n)]

    async def rollouts(self, iteration: int) -> list[list[Any]]:
        """Groups of trajectories: group_size episodes per task, sampled with seeds fixed by (iteration, task, k).
        The episodes run concurrently (a server batches them; the in-process policy takes them in turn)."""
        from pistar.agent import Budget, LLMAgent, run_episode
        from pistar.envs import make_env
        from pistar.models.hf import HFModel

        self.model.eval()
        if self.config.rollout_model == "policy":
            policy: Any = HFModel(f"policy:{self.config.out}", model=self.model, tokenizer=self.tokenizer)
        elif self.config.rollout_model == "embedded":
            policy = self.embedded_policy(iteration)
        else:
            policy = await self.sync_server(iteration)
        tasks = self.tasks(iteration)
        total, done = len(tasks) * self.config.group_size, 0

        async def play(episode: Any, k: int) -> Any:
            nonlocal done
            seed = zlib.crc32(f"{self.config.seed}:{iteration}:{episode.env_id}:{episode.seed}:{k}".encode())
            env = make_env(episode.env_id)
            agent = LLMAgent(
                policy,
                env.tools(),
                history=self.config.history,
                max_tokens=self.config.max_tokens,
                temperature=self.config.temperature,
                constrained=self.config.constrained,
                answer=env.accepts_answers,
                seed=seed,
            )
            try:
                return await run_episode(env, agent, episode.seed, Budget(max_steps=episode.max_steps))
            finally:
                env.close()
                done += 1
                self._progress(f"episode {done}/{total}")

        try:
            played = await asyncio.gather(*(play(e, k) for e in tasks for k in range(self.config.group_size)))
        finally:
            if self.config.rollout_model == "embedded":
                policy.close()
        n = self.config.group_size
        return [list(played[i * n : (i + 1) * n]) for i in range(len(tasks))]

    def embedded_policy(self, iteration: int) -> Any:
        """Rollouts at llama.cpp speed: the adapter as it is now, exported to GGUF and loaded beside the catalog
        model's GGUF, which is the very base it trains on (dequantized), so sampling differs from the trained
        policy only by llama.cpp's arithmetic. The update recomputes every log-prob under the trained model."""
        import shutil

        from pistar.models import load_model, weights
        from pistar.train.export import export_lora_gguf

        where = self.out / "rollout_adapter"
        shutil.rmtree(where, ignore_errors=True)
        self.model.save_pretrained(where, selected_adapters=["default"])
        gguf = export_lora_gguf(where, where / "adapter.gguf", weights.resolve(self.base))
        slots = min(8, self.config.tasks_per_iter * self.config.group_size)  # every episode of an iteration at once
        return load_model(f"embedded:{self.base}?lora={gguf}&parallel={slots}&ctx={4096 * slots}")

    async def sync_server(self, iteration: int) -> Any:
        """Rollouts on a vLLM server: the current adapter is saved and loaded into the server under a new name
        (vLLM's runtime LoRA endpoints, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), the previous one unloaded, and
        the server is asked for the generated token ids, which are what the update trains on."""
        import httpx

        from pistar.models.openai import OpenAIModel

        _, _, target = self.config.rollout_model.partition(":")
        base, _, url = target.partition("@")
        url = url or "http://127.0.0.1:8000/v1"
        path = (self.out / "rollout_adapters" / f"iter_{iteration:04d}").resolve()
        self.model.save_pretrained(path, selected_adapters=["default"])
        name = f"pistar-{self.out.name}-{iteration}"
        async with httpx.AsyncClient(timeout=600) as http:
            r = await http.post(f"{url}/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
            if r.status_code != 200:
                raise RuntimeError(f"{url}: loading the adapter failed ({r.status_code}): {r.text[:200]}")
            if self._served:
                await http.post(f"{url}/unload_lora_adapter", json={"lora_name": self._served})
        self._served = name
        return OpenAIModel(name, base_url=url, token_ids=True)

    def _progress(self, what: str) -> None:
        if self.on_progress:
            self.on_progress(f"iteration {self.iteration + 1}/{self.config.iterations}: {what}")

    def reward(self, traj: Any) -> float:
        return float(traj.total_reward) + self.config.invalid_penalty * traj.invalid_actions

    # -- update --------------------------------------------------------------------------------------------------

    @staticmethod
    def _trainable(traj: Any) -> list[tuple[Any, Any]]:
        """(step, call) for every model call with exact token ids: what becomes a turn."""
        return [(step, call) for step in traj.steps for call in step.calls if call.completion_ids]

    def _turns(self, traj: Any) -> list[tuple[Turn, float]]:
        """(turn, the reward of its step) for every trainable call."""
        out = []
        for step, call in self._trainable(traj):
            prompt = call.prompt_ids or self._prompt_ids(call.messages)  # a server returns only its output ids
            out.append((Turn(prompt, call.completion_ids), float(step.reward)))
        return out

    def _prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        from pistar.models.base import text_only

        enc = self.tokenizer.apply_chat_template(text_only(messages), add_generation_prompt=True, tokenize=True)
        return list(enc["input_ids"] if hasattr(enc, "keys") else enc)

    def _logprobs(self, turns: list[Turn], hidden: bool = False, model: Any = None) -> list[tuple[Any, Any, Any]]:
        """`batch_logprobs` of the turns (under the trained model by default), without gradient, in chunks of
        micro_tokens."""
        import torch

        model = self.model if model is None else model
        found: dict[int, tuple[Any, Any, Any]] = {}
        with torch.no_grad():
            for chunk in by_prompt(turns, self.config.micro_tokens):
                pairs = [(t.prompt_ids, t.completion_ids) for t in chunk]
                found.update(zip(map(id, chunk), batch_logprobs(model, pairs, hidden), strict=True))
        return [found[id(t)] for t in turns]

    def _reference_logps(self, turns: list[Turn]) -> list[Any]:
        if self.reference == "start_adapter":
            self.model.set_adapter("reference")
            try:
                return [r[0] for r in self._logprobs(turns)]
            finally:
                self.model.set_adapter("default")
        if self.reference == "adapter_off":
            with self.model.disable_adapter():
                return [r[0] for r in self._logprobs(turns)]
        return [r[0] for r in self._logprobs(turns, model=self.ref_model)]

    def build_turns(self, groups: list[list[Any]]) -> tuple[list[Turn], dict[str, Any]]:
        import torch

        c = self.config
        turns: list[Turn] = []
        equal_groups = skipped = 0
        multi_step = c.ppo_epochs > 1 or self.algo == "ppo"
        for group in groups:
            rewards = [self.reward(t) for t in group]
            equal_groups += max(rewards) - min(rewards) < 1e-9
            if self.algo == "grpo":
                advantages = grpo_advantages(rewards, c.scale_rewards)
                if c.skip_equal_groups and not any(advantages):
                    # Zero advantage on every turn: only the KL term would train, at a full forward-backward per
                    # turn (DAPO drops these groups too). Counted, so a run that learns nothing shows it.
                    skipped += sum(len(self._trainable(t)) for t in group)
                    continue
                for traj, adv in zip(group, advantages, strict=True):
                    for turn, _ in self._turns(traj):
                        turn.advantage = adv
                        turns.append(turn)
                continue
            for traj in group:
                pairs = self._turns(traj)
                if not pairs:
                    continue
                states = self._logprobs([turn for turn, _ in pairs], hidden=True)
                values = [float(self.value_head(h.float()).detach()) for _, _, h in states]
                step_rewards = [r for _, r in pairs]
                step_rewards[-1] += self.config.invalid_penalty * traj.invalid_actions
                advantages, returns = gae(step_rewards, values, c.gamma, c.lam)
                for (turn, _), a, r, v in zip(pairs, advantages, returns, values, strict=True):
                    turn.advantage, turn.ret, turn.old_value = a, r, v
                    turns.append(turn)
        if self.algo == "ppo" and len(turns) > 1:  # whiten PPO's advantages over the batch
            adv = torch.tensor([t.advantage for t in turns])
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            for t, a in zip(turns, adv.tolist(), strict=True):
                t.advantage = a
        if c.kl_coef:
            for t, ref in zip(turns, self._reference_logps(turns), strict=True):
                t.ref_logp = ref
        if multi_step or len(turns) > c.minibatch:
            for t, (old, _, _) in zip(turns, self._logprobs(turns), strict=True):
                t.old_logp = old
        return turns, {"equal_groups": equal_groups, "groups": len(groups), "skipped_turns": skipped}

    def update(self, turns: list[Turn]) -> dict[str, float]:
        import torch

        c = self.config
        self.model.train()
        sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clipfrac": 0.0, "value_loss": 0.0}
        tokens = 0
        hidden = self.value_head is not None
        # Shuffled in pieces of runs (`nested`: an episode's turns when the prompt keeps its history), so that a
        # minibatch holds whole stretches of an episode, which cost one pass; without history a piece is one turn.
        runs = nested([t.prompt_ids + t.completion_ids for t in turns])
        pieces = [run[k : k + c.minibatch] for run in runs for k in range(0, len(run), c.minibatch)]
        for _ in range(c.ppo_epochs):
            random.shuffle(pieces)
            batches: list[list[int]] = [[]]
            for piece in pieces:
                if len(batches[-1]) + len(piece) > c.minibatch:
                    batches.append([])
                batches[-1].extend(piece)
            for batch_ids in batches:
                batch = [turns[i] for i in batch_ids]
                n_tokens = sum(len(t.completion_ids) for t in batch)
                self.optimizer.zero_grad()
                for chunk in by_prompt(batch, c.micro_tokens):
                    pairs = [(t.prompt_ids, t.completion_ids) for t in chunk]
                    loss = torch.zeros(())
                    for t, (logp, entropy, h) in zip(chunk, batch_logprobs(self.model, pairs, hidden), strict=True):
                        old = t.old_logp if t.old_logp is not None else logp.detach()
                        per_token, clipped = clipped_surrogate(logp, old, torch.tensor(t.advantage), c.clip)
                        if t.ref_logp is not None:
                            kl = kl_k3(logp, t.ref_logp)
                            per_token = per_token + c.kl_coef * kl
                            sums["kl"] += kl.sum().item()
                        loss = loss + per_token.sum() / n_tokens  # token-mean over the minibatch
                        if self.value_head is not None:
                            v = self.value_head(h.float())[0]
                            vl = value_loss(v, torch.tensor(t.old_value), torch.tensor(t.ret), c.value_clip)
                            loss = loss + c.vf_coef * vl / len(batch)
                            sums["value_loss"] += vl.item()
                        sums["entropy"] += entropy.sum().item()
                        sums["clipfrac"] += clipped.sum().item()
                        tokens += len(t.completion_ids)
                    loss.backward()  # once per chunk: the shared prefix is back-propagated once
                    sums["loss"] += loss.item()
                torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
                self.optimizer.step()
        n = max(tokens, 1)
        return {
            "loss": sums["loss"] / c.ppo_epochs,
            "kl": sums["kl"] / n,
            "entropy": sums["entropy"] / n,
            "clipfrac": sums["clipfrac"] / n,
            "value_loss": sums["value_loss"] / max(len(turns) * c.ppo_epochs, 1),
        }

    # -- the loop ------------------------------------------------------------------------------------------------

    def step(self) -> dict[str, Any]:
        """One iteration: rollouts, advantages, update, checkpoint, log line."""
        t0 = time.perf_counter()
        groups = asyncio.run(self.rollouts(self.iteration))
        t1 = time.perf_counter()
        self._progress("update")
        turns, info = self.build_turns(groups)
        # Nothing trained: no KL, loss or entropy was measured; null says so (0 would claim a value).
        stats = self.update(turns) if turns else dict.fromkeys(("loss", "kl", "entropy", "clipfrac", "value_loss"))
        t2 = time.perf_counter()
        trajs = [t for g in groups for t in g]
        record = {
            "iteration": self.iteration,
            "reward": sum(map(self.reward, trajs)) / len(trajs),
            "success": sum(t.success for t in trajs) / len(trajs),
            "valid": sum(t.valid_action_rate for t in trajs) / len(trajs),
            "steps": sum(t.num_steps for t in trajs) / len(trajs),
            "turns": len(turns),
            "tokens": sum(len(t.completion_ids) for t in turns),
            **info,
            **stats,
            "rollout_s": t1 - t0,
            "update_s": t2 - t1,
        }
        self.iteration += 1
        self.checkpoint()
        with (self.out / "log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        return record

    def checkpoint(self) -> None:
        import torch

        where = self.out / "checkpoint"
        tmp = self.out / "checkpoint.partial"
        self.model.save_pretrained(tmp, selected_adapters=["default"]) if self.reference == "start_adapter" else (
            self.model.save_pretrained(tmp)
        )
        (tmp / "pistar.json").write_text(json.dumps({"base": self.base}))
        state = {"optimizer": self.optimizer.state_dict(), "iteration": self.iteration, "random": random.getstate()}
        if self.value_head is not None:
            state["value_head"] = self.value_head.state_dict()
        torch.save(state, tmp / "trainer.pt")
        if where.exists():
            import shutil

            shutil.rmtree(where)
        tmp.replace(where)

    def finish(self) -> Path:
        if self.reference == "start_adapter":
            self.model.delete_adapter("reference")
        return save_policy(self.model, self.tokenizer, self.base, self.out, {"stage": self.algo})


def train_rl(
    config: TrainConfig, algo: str, on_iteration: Any = None, trainer: RLTrainer | None = None
) -> list[dict[str, Any]]:
    trainer = trainer or RLTrainer(config, algo)
    trainer.out.mkdir(parents=True, exist_ok=True)
    log = []
    while trainer.iteration < config.iterations:
        record = trainer.step()
        log.append(record)
        if on_iteration:
            on_iteration(record)
    trainer.finish()
    full = [json.loads(line) for line in (trainer.out / "log.jsonl").read_text().splitlines()]
    plot_log(full, trainer.out / "curve.png")
    return log


def plot_log(log: list[dict[str, Any]], path: Path) -> None:
    """Reward and success, KL and entropy per iteration: the picture to look at before any number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [r["iteration"] for r in log]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(its, [r["reward"] for r in log], marker="o", label="reward")
    a.plot(its, [r["success"] for r in log], marker="s", label="success")
    a.set_xlabel("iteration")
    a.legend()
    nan = float("nan")  # an iteration that trained nothing has no KL or entropy: a gap, not a drop to 0
    b.plot(its, [nan if r.get("kl") is None else r["kl"] for r in log], marker="o", label="KL to reference")
    b.plot(its, [nan if r.get("entropy") is None else r["entropy"] for r in log], marker="s", label="entropy / token")
    b.set_xlabel("iteration")
    b.set_yscale("symlog", linthresh=1e-3)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
