# What a person reads: tables, figures, headline metrics, plot data, the executed notebook.
# Every rule reads pipeline outputs only; `snakemake --report reports/report.html` gathers the
# outputs marked report(...) with the captions in workflow/report/.


include: "report_common.smk"


rule aggregate:
    input:
        runs=run_metrics(),
        sources=expand("data/checkpoints/{source}/metrics.json", source=used_sources()),
        episodes=expand(
            "data/episodes/{benchmark}/k{k}.json",
            benchmark=report_benchmarks(),
            k=RUN_K[:1],
        ),
        raw=lambda w: target_raw_dirs(),
    output:
        table=f"{REPORT_TAB}/results.md",
        csv=f"{REPORT_TAB}/results.csv",
        html=report(
            f"{REPORT_TAB}/results.html",
            caption="../report/results.rst",
            category="1. Results",
            labels={
                "shows": "mean test accuracy with 95% CI, and each method's paired difference to its baseline",
                "table": "test accuracy by method and k",
            },
        ),
        tex=f"{REPORT_TAB}/results.tex",
        sources=f"{REPORT_TAB}/sources.csv",
        forest=report(
            f"{REPORT_FIG}/forest.png",
            caption="../report/forest.rst",
            category="1. Results",
            labels={
                "shows": "each method's mean paired difference to its baseline with 95% CI; filled: significant",
                "figure": "paired differences to full (forest plot)",
            },
        ),
        forest_svg=f"{REPORT_FIG}/forest.svg",
        figure=report(
            f"{REPORT_FIG}/accuracy_vs_k.png",
            caption="../report/accuracy_vs_k.rst",
            category="1. Results",
            labels={
                "shows": "mean test accuracy against k, with 95% bands over episodes",
                "figure": "accuracy vs k",
            },
        ),
        figure_svg=f"{REPORT_FIG}/accuracy_vs_k.svg",
        episodes_figure=report(
            f"{REPORT_FIG}/episode_differences.png",
            caption="../report/episode_differences.rst",
            category="1. Results",
            labels={
                "shows": "every episode's difference to the baseline, episodes won/tied/lost",
                "figure": "per-episode paired differences",
            },
        ),
        episodes_figure_svg=f"{REPORT_FIG}/episode_differences.svg",
        metrics="reports/metrics.json",
        by_cell="reports/metrics_by_cell.json",
        plots=directory("reports/plots"),
    log:
        f"{LOGS}/report/aggregate.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        tables=subpath(output.table, parent=True),
        figures=subpath(output.figure, parent=True),
        baseline="full",
        tuned=lambda w: " ".join(tuned_block()),
        targets=lambda w: targets_json(),
    shell:
        "python -m kshot aggregate --runs {input.runs} --sources {input.sources} "
        "--episodes {input.episodes} --tables-dir {params.tables} --figures-dir {params.figures} "
        "--metrics {output.metrics} --metrics-by-cell {output.by_cell} --plots-dir {output.plots} --baseline {params.baseline} "
        "--tuned {params.tuned} --targets {params.targets:q} --log {log}"


rule group_figures:
    input:
        ckpt=lambda w: home(f"checkpoints/{source_of(w.benchmark)}/source.pt"),
        target=lambda w: home(f"prepared/targets/{w.benchmark}.pt"),
    output:
        filters=report(
            f"{REPORT_FIG}/groups/{{benchmark}}_filters.png",
            caption="../report/filters.rst",
            category="3. Neuron groups",
            subcategory="{benchmark}",
            labels={
                "shows": "first-layer filters framed by activation group (the paper's Fig. 1)",
                "benchmark": "{benchmark}",
            },
        ),
        filters_svg=f"{REPORT_FIG}/groups/{{benchmark}}_filters.svg",
        embedding=report(
            f"{REPORT_FIG}/groups/{{benchmark}}_embedding.png",
            caption="../report/embedding.rst",
            category="3. Neuron groups",
            subcategory="{benchmark}",
            labels={
                "shows": "PCA map of one layer's neurons by k-means group (500 unlabeled target images)",
                "benchmark": "{benchmark}",
            },
        ),
        embedding_svg=f"{REPORT_FIG}/groups/{{benchmark}}_embedding.svg",
        groups=f"{REPORT_FIG}/groups/{{benchmark}}_groups.json",
    log:
        f"{LOGS}/report/group_figures_{{benchmark}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        out_dir=subpath(output.filters, parent=True),
        groups=0.25,
        images=500,
        seed=PARAMS.seed,
    shell:
        "python -m kshot group-figures --checkpoint {input.ckpt} --target {input.target} "
        "--benchmark {wildcards.benchmark} --out-dir {params.out_dir} --groups {params.groups} "
        "--images {params.images} --seed {params.seed} --log {log}"


rule search_report:
    input:
        traces=search_targets(),
    output:
        table=f"{REPORT_TAB}/search.md",
        csv=f"{REPORT_TAB}/search.csv",
        html=report(
            f"{REPORT_TAB}/search.html",
            caption="../report/search_table.rst",
            category="4. Group-count search",
            labels={
                "shows": "the group counts each search chose and its best validation reward",
                "table": "chosen counts and rewards",
            },
        ),
        tex=f"{REPORT_TAB}/search.tex",
        curves=report(
            f"{REPORT_FIG}/search_curves.png",
            caption="../report/search_curves.rst",
            category="4. Group-count search",
            labels={
                "shows": "best-so-far validation reward of the RL and random searches",
                "figure": "best reward vs evaluations",
            },
        ),
        curves_svg=f"{REPORT_FIG}/search_curves.svg",
        counts=report(
            f"{REPORT_FIG}/group_counts.png",
            caption="../report/group_counts.rst",
            category="4. Group-count search",
            labels={
                "shows": "the chosen groups per layer, as groups / neurons",
                "figure": "chosen groups per layer",
            },
        ),
        counts_svg=f"{REPORT_FIG}/group_counts.svg",
    log:
        f"{LOGS}/report/search_report.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        labels=search_labels(),
        tables=subpath(output.table, parent=True),
        figures=subpath(output.curves, parent=True),
    shell:
        "python -m kshot search-report --traces {input.traces} --labels {params.labels:q} "
        "--tables-dir {params.tables} --figures-dir {params.figures} --log {log}"


rule notebook:
    input:
        template=NOTEBOOK_TEMPLATE,
        results=f"{REPORT_TAB}/results.csv",
        sources=f"{REPORT_TAB}/sources.csv",
        groups=expand(
            f"{REPORT_FIG}/groups/{{benchmark}}_groups.json",
            benchmark=report_benchmarks(),
        ),
        search=lambda w: [f"{REPORT_TAB}/search.csv"] if search_targets() else [],
        ablation=lambda w: ablation_outputs(),
    output:
        ipynb="reports/analysis.executed.ipynb",
        html=report(
            "reports/analysis.html",
            caption="../report/notebook.rst",
            category="5. Analysis notebook",
            labels={
                "shows": "the notebook run on these results: a guided reading",
                "notebook": "analysis",
            },
        ),
    log:
        f"{LOGS}/report/notebook.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "python -m kshot notebook --template {input.template} --out {output.ipynb} "
        "--html {output.html} --cwd . --param ROOT=. --param BASELINE=full --param STUDIES=no "
        "--log {log}"
