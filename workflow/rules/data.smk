# Acquisition, preparation and episodes.


rule acquire:
    output:
        directory(f"{RAW}/{{dataset}}"),
    params:
        cfg=lambda w: params_json("data"),
    log:
        f"{LOGS}/acquire/{{dataset}}.log",
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "python -m kshot acquire --dataset {wildcards.dataset} --out {output} "
        "--params-json {params.cfg:q} > {log} 2>&1"


rule prepare_source:
    input:
        raw=lambda w: f"{RAW}/{source_dataset(w.source)}",
    output:
        "data/prepared/sources/{source}.pt",
    params:
        cfg=lambda w: params_json("data", "seed", sources=w.source),
    log:
        f"{LOGS}/prepare_source/{{source}}.log",
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "python -m kshot prepare-source --source {wildcards.source} --raw {input.raw} "
        "--out {output} --params-json {params.cfg:q} > {log} 2>&1"


rule prepare_target:
    input:
        raw=lambda w: f"{RAW}/{target_dataset(w.benchmark)}",
    output:
        "data/prepared/targets/{benchmark}.pt",
    params:
        cfg=lambda w: params_json(
            "data", benchmarks=w.benchmark, sources=source_of(w.benchmark)
        ),
    log:
        f"{LOGS}/prepare_target/{{benchmark}}.log",
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "python -m kshot prepare-target --benchmark {wildcards.benchmark} --raw {input.raw} "
        "--out {output} --params-json {params.cfg:q} > {log} 2>&1"


rule episodes:
    input:
        "data/prepared/targets/{benchmark}.pt",
    output:
        "data/episodes/{benchmark}/k{k}.json",
    params:
        cfg=lambda w: params_json("episodes", "seed"),
    log:
        f"{LOGS}/episodes/{{benchmark}}_k{{k}}.log",
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "python -m kshot episodes --benchmark {wildcards.benchmark} --k {wildcards.k} "
        "--target {input} --out {output} --params-json {params.cfg:q} > {log} 2>&1"
