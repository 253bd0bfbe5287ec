# The companion analyses, each its own target and not part of the default run: the source-effect
# study (`snakemake --cores N source_effect`) and the alignment study (`snakemake --cores N
# alignment`). Their files live under data/regime/, their reports in reports/sources/ and
# reports/alignment/.


# The source network's features against the target task: linear CKA with the labels.
rule cka:
    input:
        ckpt=lambda w: home(f"checkpoints/{source_of(w.benchmark)}/source.pt"),
        target=lambda w: home(f"prepared/targets/{w.benchmark}.pt"),
    output:
        "{root}/cka/{benchmark}.json",
    log:
        "{root}/logs/cka/{benchmark}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=lambda w: job_json("cka", w),
    shell:
        "python -m kshot cka --benchmark {wildcards.benchmark} --checkpoint {input.ckpt} "
        "--target {input.target} --out {output} --threads {threads} "
        "--params-json {params.cfg:q} --log {log}"


rule source_effect_report:
    input:
        runs=source_effect_runs(),
        cka=[home(f"cka/{b}.json") for b in source_effect_cells()],
    output:
        table="reports/sources/source_effect.md",
        csv="reports/sources/source_effect.csv",
        html=report(
            "reports/sources/source_effect.html",
            caption="../report/source_effect.rst",
            category="8. Source effect",
            labels={
                "shows": "accuracy per source, effects against random weights, masking",
                "table": "source effect",
            },
        ),
        tex="reports/sources/source_effect.tex",
        figure=report(
            "reports/sources/source_effect.png",
            caption="../report/source_effect.rst",
            category="8. Source effect",
            labels={
                "shows": "test accuracy against k per target and method, a line per source",
                "figure": "source effect",
            },
        ),
        figure_svg="reports/sources/source_effect.svg",
        metrics="reports/sources/metrics.json",
        findings="reports/sources/findings.md",
    log:
        f"{REGIME_ROOT}/logs/report/source_effect.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cells=[f"{b}={t}:{s}" for b, (t, s) in source_effect_cells().items()],
        control=PARAMS.source_effect.control,
        out_dir=subpath(output.table, parent=True),
    shell:
        "python -m kshot source-effect --runs {input.runs} --cka {input.cka} "
        "--cells {params.cells} --control {params.control} --out-dir {params.out_dir} "
        "--log {log}"


rule source_effect:
    input:
        "reports/sources/source_effect.md",
        "reports/sources/source_effect.png",
        "reports/sources/findings.md",


# A run of the alignment study: the method's evaluation episodes, as rule finetune runs them, with
# the alignment probe (its own rule: the default run's finetune jobs keep their fingerprints).
rule align:
    input:
        unpack(inputs_of),
        groups=groups_input,
        tuning=tuning_input,
    output:
        metrics="{root}/alignment/{benchmark}/{method}/k{k}/metrics.json",
    log:
        "{root}/logs/align/{benchmark}_{method}_k{k}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=lambda w: job_json("finetune", w),
        out_dir=subpath(output.metrics, parent=True),
        groups=lambda w, input: f"--groups {input.groups}" if input.groups else "",
        method=lambda w: w.method.removesuffix(TUNED),
        tuning=lambda w, input: f"--tuning {input.tuning}" if input.tuning else "",
        every=PARAMS.alignment.every,
    shell:
        "python -m kshot finetune --benchmark {wildcards.benchmark} --method {params.method} "
        "--k {wildcards.k} --checkpoint {input.ckpt} --target {input.target} "
        "--episodes {input.episodes} --out-dir {params.out_dir} {params.groups} {params.tuning} "
        "--alignment-every {params.every} --threads {threads} --params-json {params.cfg:q} --log {log}"


rule alignment_report:
    input:
        runs=alignment_runs(),
    output:
        table="reports/alignment/alignment.md",
        csv="reports/alignment/alignment.csv",
        html=report(
            "reports/alignment/alignment.html",
            caption="../report/alignment.rst",
            category="9. Alignment",
            labels={
                "shows": "representation/weight/gradient alignment, grouped against full",
                "table": "alignment",
            },
        ),
        tex="reports/alignment/alignment.tex",
        figure=report(
            "reports/alignment/alignment.png",
            caption="../report/alignment.rst",
            category="9. Alignment",
            labels={
                "shows": "the six alignments over fine-tuning steps per layer, a line per method",
                "figure": "alignment",
            },
        ),
        figure_svg="reports/alignment/alignment.svg",
        metrics="reports/alignment/metrics.json",
        findings="reports/alignment/findings.md",
    log:
        f"{REGIME_ROOT}/logs/report/alignment.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        baseline=PARAMS.alignment.methods[0] if PARAMS.alignment.methods else "full",
        out_dir=subpath(output.table, parent=True),
    shell:
        "python -m kshot alignment-report --runs {input.runs} --baseline {params.baseline} "
        "--out-dir {params.out_dir} --log {log}"


rule alignment:
    input:
        "reports/alignment/alignment.md",
        "reports/alignment/alignment.png",
        "reports/alignment/findings.md",


# The activation-maps study: Mapper graphs of one layer per backbone (kshot.maps).
rule activation_map:
    input:
        ckpt=lambda w: home(f"checkpoints/{source_of(w.benchmark)}/source.pt"),
        target=lambda w: home(f"prepared/targets/{w.benchmark}.pt"),
    output:
        figure=report(
            "reports/maps/{benchmark}.png",
            caption="../report/maps.rst",
            category="10. Activation maps",
            subcategory="{benchmark}",
            labels={
                "shows": "Mapper graphs: target images by class, neurons by k-means group",
                "benchmark": "{benchmark}",
            },
        ),
        figure_svg="reports/maps/{benchmark}.svg",
        images="reports/maps/{benchmark}_images.html",
        neurons="reports/maps/{benchmark}_neurons.html",
        summary="reports/maps/{benchmark}.json",
    log:
        f"{REGIME_ROOT}/logs/report/maps_{{benchmark}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        out_dir=subpath(output.figure, parent=True),
        study=PARAMS.maps,
        seed=PARAMS.seed,
    shell:
        "python -m kshot maps --checkpoint {input.ckpt} --target {input.target} "
        "--benchmark {wildcards.benchmark} --out-dir {params.out_dir} "
        "--layer {params.study.layer} --images {params.study.images} "
        "--groups {params.study.groups} --cubes {params.study.cubes} "
        "--overlap {params.study.overlap} --seed {params.seed} --log {log}"


rule maps_findings:
    input:
        expand("reports/maps/{benchmark}.json", benchmark=PARAMS.maps.benchmarks),
    output:
        "reports/maps/findings.md",
    log:
        f"{REGIME_ROOT}/logs/report/maps_findings.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "python -m kshot maps-findings --summaries {input} --out {output} --log {log}"


rule maps:
    input:
        "reports/maps/findings.md",
        expand("reports/maps/{benchmark}.png", benchmark=PARAMS.maps.benchmarks),
