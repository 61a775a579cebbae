"""Defense variants on every victim of a bench suite, each victim poisoned and built once  (docs/zoo.md)

Usage: python benchmarks/probes/suite_variants.py SUITE OUT.jsonl [attack ...] -- 'JSON' ...

A bench suite's rows can only change defense keys; the adapter's own defense-side choices (its mixing,
``data.mix``) would need a suite per choice, and the zoo's trained attacks retrain their generators in
every suite before the victim cache is read. Here each JSON is one purify() call on the suite's cells:
its "adapter" entry (optional) sets attributes of a copy of the cell's adapter, e.g.
'{"adapter": {"mix": "cutmix"}, "method": "nft"}'; a "then" entry (optional) holds the defense keys of a
second purify() call on the first one's output, e.g. '{"method": "nft", "then": {"method": "clean_subspace"}}';
the other keys are defense keys. One JSON line per
(cell, variant) is appended to OUT.jsonl as it finishes. Research probe, not part of the package.
"""
import copy
import json
import sys

from nftkit.bench import cell_victim, defense_config, prepare_suite
from nftkit.purify import purify

args = sys.argv[1:]
split = args.index("--")
suite_name, out, only = args[0], args[1], set(args[2:split])
variants = [json.loads(v) for v in args[split + 1:]]
suite, cells = prepare_suite(suite_name)
for _, attack_name, raw, exp in cells:
    if only and attack_name not in only:
        continue
    splits, victim, meta, measure = cell_victim(exp)
    before = measure(victim)
    print(f"[{attack_name}] backdoored: {before}", flush=True)
    for variant in variants:
        spec = dict(variant)
        adapter = copy.copy(exp.adapter.for_defense())
        for key, value in spec.pop("adapter", {}).items():
            if not hasattr(adapter, key):
                raise SystemExit(f"the adapter has no attribute '{key}'")
            setattr(adapter, key, value)
        model, runtime = victim, 0.0
        second = spec.pop("then", None)
        for stage in [spec] + ([second] if second else []):
            result = purify(model, adapter, splits.clean, config=defense_config(raw, stage))
            model, runtime = result.model, runtime + result.runtime_s
        after = measure(model)
        print(f"[{attack_name}] {json.dumps(variant)}: {after} in {runtime:.1f}s", flush=True)
        with open(out, "a") as f:
            f.write(json.dumps({"attack": attack_name, "variant": variant, "before": before, "after": after,
                                "runtime_s": runtime, "victim_key": meta["key"]}) + "\n")
