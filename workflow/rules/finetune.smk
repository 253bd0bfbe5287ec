# One job per (benchmark, method, k): it runs every episode, resuming finished ones.


rule finetune:
    input:
        unpack(inputs_of),
        groups=groups_input,
        tuning=tuning_input,
    output:
        # also written beside it, undeclared: timings.json (wall times) and episodes/ (resume
        # files). DVC leaves both out of data/runs (.dvcignore), so a `dvc pull` does not bring
        # them, and Snakemake must not rerun a run for their absence.
        metrics="{root}/runs/{benchmark}/{method}/k{k}/metrics.json",
    log:
        "{root}/logs/finetune/{benchmark}_{method}_k{k}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=lambda w: job_json("finetune", w),
        out_dir=subpath(output.metrics, parent=True),
        groups=lambda w, input: f"--groups {input.groups}" if input.groups else "",
        # a tuned method (<method>+tuned) is <method> run with its tune stage's chosen options
        method=lambda w: w.method.removesuffix(TUNED),
        tuning=lambda w, input: f"--tuning {input.tuning}" if input.tuning else "",
    shell:
        "python -m kshot finetune --benchmark {wildcards.benchmark} --method {params.method} "
        "--k {wildcards.k} --checkpoint {input.ckpt} --target {input.target} "
        "--episodes {input.episodes} --out-dir {params.out_dir} {params.groups} {params.tuning} "
        "--threads {threads} --params-json {params.cfg:q} --log {log}"


# One job per (benchmark, tuned method, k): its grid's candidates on the search episodes, the best
# re-checked with the defaults on the selection episodes (kshot.tuning); never test data.
rule tune:
    input:
        unpack(inputs_of),
    output:
        "{root}/tune/{benchmark}/{method}/k{k}.json",
    log:
        "{root}/logs/tune/{benchmark}_{method}_k{k}.log",
    priority: 10  # the tuned runs wait for them, as grouped_rl for the searches
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=lambda w: job_json("tune", w),
    shell:
        "python -m kshot tune --benchmark {wildcards.benchmark} --method {wildcards.method} "
        "--k {wildcards.k} --checkpoint {input.ckpt} --target {input.target} "
        "--episodes {input.episodes} --out {output} --threads {threads} "
        "--params-json {params.cfg:q} --log {log}"
