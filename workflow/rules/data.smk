# Acquisition, preparation and episodes.


# A dataset only the regime study uses goes to data/regime/raw/ (see raw_home), outside the data
# stage's data/raw.
rule acquire:
    output:
        directory(f"{RAW}/{{dataset}}"),
    log:
        f"{LOGS}/acquire/{{dataset}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=lambda w, output: acquire_json(w, output[0]),
    shell:
        "python -m kshot acquire --dataset {wildcards.dataset} --out {output} "
        "--params-json {params.cfg:q} --log {log}"


use rule acquire as acquire_regime with:
    output:
        directory(f"{REGIME_ROOT}/raw/{{dataset}}"),
    log:
        f"{REGIME_ROOT}/logs/acquire/{{dataset}}.log",


rule prepare_source:
    input:
        raw=lambda w: raw_home(source_dataset(w.source)),
    output:
        "{root}/prepared/sources/{source}.pt",
    log:
        "{root}/logs/prepare_source/{source}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        cfg=lambda w: job_json("prepare-source", w),
    shell:
        "python -m kshot prepare-source --source {wildcards.source} --raw {input.raw} "
        "--out {output} --params-json {params.cfg:q} --log {log}"


rule prepare_target:
    input:
        raw=lambda w: raw_home(target_dataset(w.benchmark)),
    output:
        "{root}/prepared/targets/{benchmark}.pt",
    log:
        "{root}/logs/prepare_target/{benchmark}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        cfg=lambda w: job_json("prepare-target", w),
    shell:
        "python -m kshot prepare-target --benchmark {wildcards.benchmark} --raw {input.raw} "
        "--out {output} --params-json {params.cfg:q} --log {log}"


rule episodes:
    input:
        lambda w: home(f"prepared/targets/{w.benchmark}.pt"),
    output:
        "{root}/episodes/{benchmark}/k{k}.json",
    log:
        "{root}/logs/episodes/{benchmark}_k{k}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=lambda w, input: episodes_json(w, input[0]),
    shell:
        "python -m kshot episodes --benchmark {wildcards.benchmark} --k {wildcards.k} "
        "--target {input} --out {output} --params-json {params.cfg:q} --log {log}"
