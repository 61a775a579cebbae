"""Defense variants on every victim of a bench suite, each victim poisoned and built once  (docs/zoo.md)

Usage: python benchmarks/probes/suite_variants.py SUITE OUT.jsonl [attack ...] -- 'JSON' ...

A bench suite's rows can only change defense keys; the adapter's own defense-side choices (its mixing,
``data.mix``) would need a suite per choice, and the zoo's trained attacks retrain their generators in
every suite before the victim cache is read. Here each JSON is one purify() call on the suite's cells:
its "adapter" entry (optional) sets attributes of a copy of the cell's adapter, e.g.
'{"adapter": {"mix": "cutmix"}, "method": "nft"}'; a "then" entry (optional) holds the defense keys of a
second purify() call on the first one's output, e.g. '{"method": "nft", "then": {"method": "clean_subspace"}}'
(both outputs are measured: "stages" in the JSON line), and a list of them is one line each, all on the
same first output;
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
        seconds = spec.pop("then", None)
        first = purify(victim, adapter, splits.clean, config=defense_config(raw, spec))
        first_after = measure(first.model)
        # a list under "then" is several second stages, each on the same first output
        for second in seconds if isinstance(seconds, list) else [seconds]:
            stages, runtime, energy = [first_after], first.runtime_s, None
            if second is not None:
                result = purify(first.model, adapter, splits.clean, config=defense_config(raw, second))
                stages.append(measure(result.model))
                runtime += result.runtime_s
                energy = result.info.get("subspace", {}).get("energy")
            line = {**variant, "then": second} if second is not None else variant
            print(f"[{attack_name}] {json.dumps(line)}: {stages} (energy {energy}) in {runtime:.1f}s", flush=True)
            with open(out, "a") as f:
                f.write(json.dumps({"attack": attack_name, "variant": line, "before": before, "after": stages[-1],
                                    "stages": stages, "projected_energy": energy, "runtime_s": runtime,
                                    "victim_key": meta["key"]}) + "\n")
