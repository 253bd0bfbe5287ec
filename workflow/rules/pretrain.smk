# Source pre-training: one checkpoint per source, shared by the benchmarks that use it.


rule pretrain:
    input:
        "data/prepared/sources/{source}.pt",
    output:
        ckpt="data/checkpoints/{source}/source.pt",
        metrics="data/checkpoints/{source}/metrics.json",
    params:
        cfg=lambda w: params_json("seed", "device", sources=w.source),
    log:
        f"{LOGS}/pretrain/{{source}}.log",
    threads: workflow.cores
    resources:
        mem_mb=4000,
    shell:
        "python -m kshot pretrain --source {wildcards.source} --data {input} "
        "--out {output.ckpt} --metrics {output.metrics} --threads {threads} "
        "--params-json {params.cfg:q} > {log} 2>&1"
