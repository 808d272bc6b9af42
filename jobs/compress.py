"""The compress stage as a job: variants of a registered fp32 parent, gated, published, best one promoted."""

from jobs._common import parser, progress, run_job, variants_summary


def body(args, spec):
    from maas.pipeline import stage_compress, stage_promote
    from maas.registry import Registry

    if spec.kind == "encoder":  # the packaged encoder is its own parent: compress = the encoder pipeline, unserved
        from maas.compress.encoder_stage import run_encoder_pipeline

        result = run_encoder_pipeline(spec, serve=False, progress=progress)
        return {"parent": result.variants[0]["ref"], "variants": variants_summary(result.variants),
                "promoted": result.promoted_ref, "alias": result.alias, "report": result.report}
    registry = Registry(spec.store)
    parent = registry.resolve(args.parent or spec.model.name)
    progress("compress", f"{', '.join(spec.compress.methods)} from {parent.ref}")
    variants = stage_compress(spec, parent.ref)
    fields = {"parent": parent.ref, "variants": variants_summary(variants)}
    if not args.no_promote:
        candidates = [{"ref": parent.ref, "passed": True, "metrics": parent.metrics}] + variants
        fields["promoted"] = stage_promote(spec, candidates)
        fields["alias"] = spec.deploy.alias
    return fields


if __name__ == "__main__":
    p = parser("compress", __doc__)
    p.add_argument("--parent", help="fp32 version to compress, name/version (default: the latest version)")
    p.add_argument("--no-promote", action="store_true", help="publish the variants without moving the alias")
    raise SystemExit(run_job("compress", body, p))
