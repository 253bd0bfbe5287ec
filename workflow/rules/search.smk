# The search of group counts per layer: one job per benchmark, k and strategy (RL or random).


rule search:
    input:
        unpack(inputs_of),
        acts=lambda w: activations_file(w.benchmark, w.k, activation_tag()),
    output:
        "{root}/search/{benchmark}/k{k}/{strategy}.json",
    log:
        "{root}/logs/search/{benchmark}_k{k}_{strategy}.log",
    priority: 10  # long jobs on the critical path (grouped_rl waits for them): start them first
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        cfg=lambda w: job_json("search", w),
    shell:
        "python -m kshot search --benchmark {wildcards.benchmark} "
        "--strategy {wildcards.strategy} --checkpoint {input.ckpt} --target {input.target} "
        "--episodes {input.episodes} --activations {input.acts} --out {output} --threads {threads} "
        "--params-json {params.cfg:q} --log {log}"
