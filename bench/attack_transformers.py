#!/usr/bin/env python3
"""The attack step, the same work on both sides: `clipsteer attack` (Rust, candle) against a
plain PyTorch + transformers implementation of the same BEAST beam (Sadasivan et al., ICML 2024),
written here from the paper's description and from clipsteer's source
(crates/clipsteer/src/steer/search/attack.rs, steer/objectives/victim.rs), with deterministic
top-k proposals (`--proposal top-k`) so that both sides must choose the same suffix tokens.

What one step does, on both sides (attacker = victim = MODEL unless --victim is given):

1. per beam prompt, the attacker's next-token logits after its own chat template's head, the
   instruction, and the suffix's attacker token ids; its K most probable tokens (special tokens
   excluded, ties to the lower id) are the proposals; a proposal whose suffix text (decoded,
   special tokens kept) repeats an earlier one of the step is dropped;
2. every W*K candidate prompt (instruction + suffix text) is rendered by the victim's chat
   template (apply_chat_template, add_generation_prompt) and tokenised without added special
   tokens; the target (tokenised alone) is teacher-forced after it; the score is the mean
   log-probability of the target's tokens, plus, where the target ends inside a word, one more
   term: ln sum p(t) over the tokens t that end a word (docs/ATTACK.md, "Objectives");
3. the W best by score (+ --readability x the attacker's mean log-probability of the suffix;
   stable sort, ties keep the earlier candidate) are the new beams; a candidate whose
   teacher-forced argmax already spells the target (and ends its word) is moved to the front;
   then the new beams' attacker logits (one forward of the W rows);
4. the success check: the leader's greedy answer from the victim, read only while it can still
   start with the target, up to the target's token count + 1 tokens.

Before step 0 both sides score the instruction alone, read its greedy answer
(--response-tokens), and run the attacker over its context; after the last step (no success)
they read the best prompt's greedy answer. These are inside both sides' attack seconds.

How the PyTorch side does it, as a plain transformers user would (and as BEAST's code and
garak's BEAST probe do): one right-padded batch of all W*K candidate rows per step, each row the
whole templated prompt and target (no KV cache shared between candidates or kept across steps);
the attacker's beams rerun from the start each step (one batch of W rows); greedy answers with
`model.generate` (do_sample=False) and a stopping criterion for the success check's early stop.
The LM head runs only where logits are read (--full-logits: at every position, as
`model(...).logits` does by default). clipsteer instead continues KV caches of the shared
prefixes and gets the success check from the scoring forward (docs/ATTACK.md, the six bullets).

Checked: the leader's suffix text, score and response at every step, the step's top-5 suffixes,
and the final suffix, score, queries and NLLs. Timed: each step (differences of the seconds
since the attack began; step 0 includes the set-up before it), the whole attack (excluding
model loading and the baseline/final NLLs, as clipsteer's `done.seconds`), the process wall
time, and the peak RSS of each side (getrusage: RUSAGE_CHILDREN for clipsteer, RUSAGE_SELF for
this process). The 1-minute load average before each side is recorded: with other work on the
cores, torch's OpenMP threads wait at every op's barrier for a descheduled sibling, which slowed
its side about 3x at --threads 2 on a 2-core VM beside two rustc (candle's rayon pool far less),
so compare seconds only from a quiet machine.

    /work/venv/bin/python bench/attack_transformers.py /tmp/smollm2-hf \
        --instruction "What is the capital of France?" \
        --target "The capital of France is Berlin" \
        --beam-width 3 --candidates 5 --steps 3 --threads 2

Exit code 0 when both sides chose the same suffix at every step, 1 when they did not.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import regex
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

# Rust's char::is_whitespace (Unicode White_Space), which str::trim_start strips; Python's
# str.isspace also counts U+001C..U+001F.
RUST_WHITESPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)}
# Rust's char::is_alphanumeric: the Alphabetic property or a number (Nd, Nl, No).
ALPHANUMERIC = regex.compile(r"[\p{Alphabetic}\p{N}]")


def trim_start(text):
    i = 0
    while i < len(text) and text[i] in RUST_WHITESPACE:
        i += 1
    return text[i:]


def continues_word(c):
    return ALPHANUMERIC.match(c) is not None


def ends_inside_word(text):
    return bool(text) and continues_word(text[-1])


def succeeds(target, response):
    """The success check: the answer starts with the target, ending its word where it does."""
    target, response = trim_start(target), trim_start(response)
    if not response.startswith(target):
        return False
    rest = response[len(target):]
    return not (ends_inside_word(target) and rest and continues_word(rest[0]))


def can_still_succeed(target, partial):
    target, partial = trim_start(target), trim_start(partial)
    return partial.endswith("\ufffd") or target.startswith(partial) or partial.startswith(target)


class LM:
    """A causal LM and its tokenizer, as transformers loads them."""

    def __init__(self, path, attn):
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation=attn).eval()
        self.eos = set(self.model.generation_config.eos_token_id
                       if isinstance(self.model.generation_config.eos_token_id, list)
                       else [self.model.generation_config.eos_token_id])
        self.special = sorted(i for i, t in self.tok.added_tokens_decoder.items() if t.special)
        self.has_template = bool(getattr(self.tok, "chat_template", None))

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def user_prompt(self, text):
        return self.tok.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, tokenize=False)

    def before_user(self):
        slot = "\uf8ff\uf8feclipsteer-user\uf8fe\uf8ff"
        parts = self.user_prompt(slot).split(slot)
        assert len(parts) == 2, "the chat template must write the user message once, as is"
        return parts[0]

    def logits_at(self, rows, positions, full_logits):
        """One right-padded forward of `rows`; the logits [n, vocab] at (row, position) pairs."""
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        ri = torch.tensor([p[0] for p in positions])
        pi = torch.tensor([p[1] for p in positions])
        if full_logits:
            return self.model(input_ids=ids, attention_mask=mask).logits[ri, pi].float()
        hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.model.get_output_embeddings()(hidden[ri, pi]).float()

    def last_logits(self, rows, full_logits):
        """Next-token logits after each row (all rows of one length): one forward."""
        ids = torch.tensor(rows, dtype=torch.long)
        if full_logits:
            return self.model(input_ids=ids).logits[:, -1].float()
        return self.model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()


class StopWhenLeft(StoppingCriteria):
    """Stops greedy decoding once the answer can no longer start with the target."""

    def __init__(self, lm, start, target):
        self.lm, self.start, self.target = lm, start, target

    def __call__(self, input_ids, scores, **kwargs):
        answer = [t for t in input_ids[0, self.start:].tolist() if t not in self.lm.eos]
        go_on = can_still_succeed(self.target, self.lm.decode(answer))
        return torch.tensor([not go_on], dtype=torch.bool)


class TorchAttack:
    def __init__(self, a, attacker, victim):
        self.a, self.attacker, self.victim = a, attacker, victim
        self.target = a.target
        self.target_ids = victim.encode(a.target)
        assert self.target_ids and a.target.strip(), "the target is empty"
        # The word-end term's tokens: those whose text does not begin with a letter or digit.
        self.word_end = None
        if ends_inside_word(a.target):
            vocab = victim.model.config.vocab_size
            texts = victim.tok.batch_decode([[i] for i in range(vocab)], skip_special_tokens=False,
                                            clean_up_tokenization_spaces=False)
            ending = [i for i, t in enumerate(texts)
                      if t and not continues_word(t[0]) and t[0] != "\ufffd"]
            self.word_end = (torch.tensor(ending), set(ending))
        self.check_tokens = len(self.target_ids) + 1
        self.shown = max(a.response_tokens, self.check_tokens)
        if a.victim is None or attacker is victim:
            context = victim.before_user() + a.instruction
        elif attacker.has_template:
            context = attacker.before_user() + a.instruction
        else:
            context = a.instruction
        self.context_ids = attacker.encode(context)
        self.excluded = torch.tensor(attacker.special, dtype=torch.long)

    def victim_ids(self, text):
        return self.victim.encode(self.victim.user_prompt(text))

    def score(self, texts):
        """Per prompt: (objective, greedy answer starts with the target)."""
        fed_tail = self.target_ids if self.word_end else self.target_ids[:-1]
        extra = 1 if self.word_end else 0
        prompts = [self.victim_ids(t) for t in texts]
        rows = [p + fed_tail for p in prompts]
        positions = [(i, len(p) - 1 + j) for i, p in enumerate(prompts)
                     for j in range(len(self.target_ids) + extra)]
        logits = self.victim.logits_at(rows, positions, self.a.full_logits)
        logp = torch.log_softmax(logits, dim=-1)
        argmax = logits.argmax(dim=-1).tolist()
        n = len(self.target_ids) + extra
        out = []
        for i in range(len(prompts)):
            at = i * n
            terms = [float(logp[at + j, t]) for j, t in enumerate(self.target_ids)]
            hit = all(argmax[at + j] == t for j, t in enumerate(self.target_ids))
            if self.word_end:
                after = at + len(self.target_ids)
                terms.append(float(torch.logsumexp(logp[after, self.word_end[0]], dim=0)))
                hit = hit and argmax[after] in self.word_end[1]
            s = 0.0
            for x in terms:
                s += x
            out.append((float(np.float32(s / len(terms))), hit))
        return out

    def target_nll(self, text):
        """BEAST's loss: the mean NLL of the target's tokens alone."""
        p = self.victim_ids(text)
        logits = self.victim.logits_at([p + self.target_ids[:-1]],
                                       [(0, len(p) - 1 + j) for j in range(len(self.target_ids))],
                                       self.a.full_logits)
        logp = torch.log_softmax(logits, dim=-1)
        return -sum(float(logp[j, t]) for j, t in enumerate(self.target_ids)) / len(self.target_ids)

    def greedy(self, text, max_tokens, toward=False):
        ids = torch.tensor([self.victim_ids(text)])
        criteria = StoppingCriteriaList(
            [StopWhenLeft(self.victim, ids.shape[1], self.target)] if toward else [])
        out = self.victim.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
            stopping_criteria=criteria, pad_token_id=min(self.victim.eos),
            eos_token_id=sorted(self.victim.eos))
        answer = []
        for t in out[0, ids.shape[1]:].tolist():
            if t in self.victim.eos:
                break
            answer.append(t)
        return self.victim.decode(answer)

    def propose(self, logits):
        masked = logits.clone()
        masked[self.excluded] = float("-inf")
        # Highest first, ties to the lower id (a stable sort keeps id order among equals).
        order = torch.sort(masked, descending=True, stable=True).indices
        return order[:self.a.candidates].tolist()

    def run(self):
        a, att = self.a, self.attacker
        instruction = a.instruction
        started = time.perf_counter()
        logits = att.last_logits([self.context_ids], a.full_logits)
        start_score = self.score([instruction])[0][0]
        queries = 1
        response = self.greedy(instruction, self.shown)
        queries += 1
        beams = [dict(ids=[], suffix="", log_prob=0.0, score=start_score, logits=logits[0])]
        best = dict(suffix="", score=start_score, response=response)
        steps, events, success = [], [], succeeds(self.target, response)
        if success:
            return dict(steps=events, suffix="", score=start_score, response=response,
                        success=True, seconds=time.perf_counter() - started, queries=queries)
        for step in range(a.steps):
            exts, seen = [], set()
            for parent, beam in enumerate(beams):
                log_probs = beam["logits"].double().log_softmax(-1)
                for token in self.propose(beam["logits"]):
                    suffix = att.decode(beam["ids"] + [token])
                    if suffix in seen:
                        continue
                    seen.add(suffix)
                    exts.append(dict(parent=parent, token=token, suffix=suffix,
                                     log_prob=beam["log_prob"] + float(log_probs[token])))
            scored = self.score([instruction + e["suffix"] for e in exts])
            queries += len(exts)
            for e, (s, hit) in zip(exts, scored):
                e["objective"] = s
                e["total"] = float(np.float32(s) + np.float32(a.readability)
                                   * np.float32(e["log_prob"] / (step + 1)))
                e["hit"] = hit
            order = sorted(range(len(exts)), key=lambda i: -exts[i]["total"])
            top = [dict(suffix=exts[i]["suffix"], score=exts[i]["total"]) for i in order[:5]]
            hits = [k for k, i in enumerate(order) if exts[i]["hit"]]
            if hits:
                order.insert(0, order.pop(hits[0]))
            order = order[:a.beam_width]
            rows = [self.context_ids + beams[exts[i]["parent"]]["ids"] + [exts[i]["token"]]
                    for i in order]
            new_logits = att.last_logits(rows, a.full_logits)
            beams = [dict(ids=beams[exts[i]["parent"]]["ids"] + [exts[i]["token"]],
                          suffix=exts[i]["suffix"], log_prob=exts[i]["log_prob"],
                          score=exts[i]["objective"], logits=new_logits[k])
                     for k, i in enumerate(order)]
            leader = beams[0]
            prompt = instruction + leader["suffix"]
            response = self.greedy(prompt, self.check_tokens, toward=True)
            queries += 1
            success = succeeds(self.target, response)
            if leader["score"] >= best["score"] or success:
                best = dict(suffix=leader["suffix"], score=leader["score"], response=response)
            events.append(dict(step=step, suffix=leader["suffix"], suffix_ids=leader["ids"],
                               score=leader["score"], response=response, success=success,
                               top=top, seconds=time.perf_counter() - started))
            if success:
                best["response"] = self.greedy(prompt, self.shown)
                queries += 1
                break
        if not success:
            best["response"] = self.greedy(instruction + best["suffix"], self.shown)
            queries += 1
        return dict(steps=events, suffix=best["suffix"], score=best["score"],
                    response=best["response"], success=success,
                    seconds=time.perf_counter() - started, queries=queries)


def step_seconds(events):
    out, before = [], 0.0
    for e in events:
        out.append(e["seconds"] - before)
        before = e["seconds"]
    return out


def run_clipsteer(a):
    cmd = [a.clipsteer, "attack", "--device", "cpu", "--lm", a.model,
           "--instruction", a.instruction, "--target-response", a.target,
           "--beam-width", str(a.beam_width), "--candidates", str(a.candidates),
           "--max-tokens", str(a.steps), "--proposal", "top-k",
           "--readability", str(a.readability), "--response-tokens", str(a.response_tokens),
           "--time-limit", "1e8", "--json"]
    if a.victim:
        cmd += ["--victim", a.victim]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode not in (0, 1):
        sys.exit(f"clipsteer failed ({proc.returncode}): {proc.stderr.strip()}")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    steps = [e for e in events if e.get("event") == "step"]
    done = next(e for e in events if e.get("event") == "done")
    return dict(steps=steps, done=done, wall=wall, rss_mib=rss_kib / 1024, cmd=cmd)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="attacker (and victim) in the HF layout")
    p.add_argument("--victim", default=None, help="another victim directory (default: MODEL)")
    p.add_argument("--instruction", default="What is the capital of France?")
    p.add_argument("--target", default="The capital of France is Berlin")
    p.add_argument("--beam-width", type=int, default=5)
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--steps", type=int, default=3,
                   help="suffix tokens (clipsteer's --max-tokens; no time limit on either side)")
    p.add_argument("--readability", type=float, default=0.0)
    p.add_argument("--response-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--attn", default="sdpa", help="transformers attn_implementation")
    p.add_argument("--full-logits", action="store_true",
                   help="compute the LM head at every position, as model(...).logits does")
    p.add_argument("--clipsteer", default="target/release/clipsteer")
    p.add_argument("--skip-clipsteer", action="store_true")
    p.add_argument("--json-out", default=None, help="also write the summary and events here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    load_before = {"clipsteer": os.getloadavg()[0]}
    ours = None if a.skip_clipsteer else run_clipsteer(a)
    load_before["transformers"] = os.getloadavg()[0]

    wall_start = time.perf_counter()
    attacker = LM(a.model, a.attn)
    victim = attacker if a.victim is None or a.victim == a.model else LM(a.victim, a.attn)
    with torch.inference_mode():
        attack = TorchAttack(a, attacker, victim)
        baseline_nll = attack.target_nll(a.instruction)  # before the clock, as clipsteer's
        theirs = attack.run()
        target_nll = attack.target_nll(a.instruction + theirs["suffix"])
    theirs_wall = time.perf_counter() - wall_start
    theirs_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    t_steps = step_seconds(theirs["steps"])
    summary = {"model": a.model, "victim": a.victim or a.model, "instruction": a.instruction,
               "target": a.target, "beam_width": a.beam_width, "candidates": a.candidates,
               "steps": len(theirs["steps"]), "threads": a.threads, "attn": a.attn,
               "full_logits": a.full_logits, "torch": torch.__version__,
               "loadavg_1min_before": load_before,
               "transformers_step_s": [round(s, 4) for s in t_steps],
               "transformers_median_step_s": round(statistics.median(t_steps), 4),
               "transformers_attack_s": round(theirs["seconds"], 3),
               "transformers_process_wall_s": round(theirs_wall, 3),
               "transformers_peak_rss_mib": round(theirs_rss, 1),
               "transformers_suffix": theirs["suffix"], "transformers_success": theirs["success"]}
    agree = True
    if ours is not None:
        o_steps = step_seconds(ours["steps"])
        done = ours["done"]
        mismatches, top_mismatches, response_mismatches, score_diff = [], [], [], 0.0
        for k in range(max(len(ours["steps"]), len(theirs["steps"]))):
            o = ours["steps"][k] if k < len(ours["steps"]) else None
            t = theirs["steps"][k] if k < len(theirs["steps"]) else None
            if o is None or t is None or o["suffix"] != t["suffix"]:
                mismatches.append({"step": k, "clipsteer": o and o["suffix"],
                                   "transformers": t and t["suffix"]})
                continue
            score_diff = max(score_diff, abs(o["score"] - t["score"]))
            if [c["suffix"] for c in o["top"]] != [c["suffix"] for c in t["top"]]:
                top_mismatches.append({"step": k, "clipsteer": [c["suffix"] for c in o["top"]],
                                       "transformers": [c["suffix"] for c in t["top"]]})
            if o["response"] != t["response"] or o["success"] != t["success"]:
                response_mismatches.append({"step": k, "clipsteer": o["response"],
                                            "transformers": t["response"]})
        agree = not mismatches and done["suffix"] == theirs["suffix"]
        c_med = statistics.median(o_steps) if o_steps else float("nan")
        summary.update({
            "same_suffix_every_step": agree,
            "suffix_mismatches": mismatches,
            "top5_mismatches": top_mismatches,
            "response_mismatches": response_mismatches,
            "max_leader_score_abs_diff": score_diff,
            "final": {"clipsteer": {k: done.get(k) for k in
                                    ("suffix", "score", "success", "queries", "target_nll",
                                     "baseline_nll", "response")},
                      "transformers": {"suffix": theirs["suffix"], "score": theirs["score"],
                                       "success": theirs["success"],
                                       "queries": theirs["queries"],
                                       "target_nll": target_nll, "baseline_nll": baseline_nll,
                                       "response": theirs["response"]}},
            "clipsteer_step_s": [round(s, 4) for s in o_steps],
            "clipsteer_median_step_s": round(c_med, 4),
            "median_step_ratio": round(statistics.median(t_steps) / c_med, 2),
            "clipsteer_attack_s": round(done["seconds"], 3),
            "attack_ratio": round(theirs["seconds"] / done["seconds"], 2),
            "clipsteer_process_wall_s": round(ours["wall"], 3),
            "process_wall_ratio": round(theirs_wall / ours["wall"], 2),
            "clipsteer_peak_rss_mib": round(ours["rss_mib"], 1),
        })
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"summary": summary, "transformers_steps": theirs["steps"],
                       "clipsteer": ours}, f, indent=1, ensure_ascii=False)
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    for k, t in enumerate(theirs["steps"]):
        line = f"step {k}: transformers {t_steps[k]:.3f} s"
        if ours is not None and k < len(ours["steps"]):
            line += f", clipsteer {step_seconds(ours['steps'])[k]:.3f} s"
        print(line + f", suffix {t['suffix']!r}", file=sys.stderr)
    if ours is not None:
        print(f"{'SAME' if agree else 'DIFFERENT'} suffix at every step; median step "
              f"{summary['transformers_median_step_s']} s (transformers) vs "
              f"{summary['clipsteer_median_step_s']} s (clipsteer), "
              f"ratio {summary['median_step_ratio']}; attack {summary['transformers_attack_s']} "
              f"vs {summary['clipsteer_attack_s']} s, ratio {summary['attack_ratio']}; peak RSS "
              f"{summary['transformers_peak_rss_mib']} vs {summary['clipsteer_peak_rss_mib']} MiB",
              file=sys.stderr)
    sys.exit(0 if agree else 1)


if __name__ == "__main__":
    main()
