# Source pre-training: one checkpoint per source, shared by the benchmarks that use it.


rule pretrain:
    input:
        data=lambda w: home(f"prepared/sources/{w.source}.pt"),
        # a local weights file (sources.<name>.pretrained) is an input: a new file, a new network
        weights=lambda w: source_config(w.source).weights_file() or [],
    output:
        ckpt="{root}/checkpoints/{source}/source.pt",
        metrics="{root}/checkpoints/{source}/metrics.json",
    log:
        "{root}/logs/pretrain/{source}.log",
    conda:
        "../../environment.yml"
    # the recipe's (sources.<name>.threads), not --cores': on CPU it decides the float rounding
    threads: lambda w: source_config(w.source).threads
    resources:
        mem_mb=4000,
    params:
        cfg=lambda w: job_json("pretrain", w),
    shell:
        "python -m kshot pretrain --source {wildcards.source} --data {input.data} "
        "--out {output.ckpt} --metrics {output.metrics} "
        "--params-json {params.cfg:q} --log {log}"
