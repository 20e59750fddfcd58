"""Command-line defaults that depend on this machine: the target a command builds for when none is
named, and the tuning database a compile reuses. Kept out of cli.py, which stays the entry point."""
from __future__ import annotations


def resolve_target(args) -> str:
    """``--target``, or this machine's default (said, with why, so the user knows what was built)."""
    if args.target:
        return args.target
    from targets import default_target
    name, why = default_target(args.targets_file or ())
    print(f"target: {name} (default for {why}; --target llvm for a generic build)")
    return name


def tuning_database(args, target: str, model_name: str):
    """The tuning database folder a compile reuses: --db ROOT/<target> when it holds records (named
    targets only), else the committed database of this zoo model (targets/tuned/<cpu>/...) tuned on
    this target's CPU, else one tuned on another CPU of the same architecture (said: its schedules
    are correct here, not tuned for this CPU); None with --untuned or when nothing fits (said, with
    the reason)."""
    import targets
    if args.untuned or not targets.is_name(target, args.targets_file or ()):
        return None
    from targets.tuning_db import SHIPPED, db_dir, default_root, has_records, shipped_folder, target_cpu, zoo_database
    folder = db_dir(args.db or default_root(), target)
    if has_records(folder):
        print(f"using tuned schedules from {folder} (--untuned to ignore)")
        return folder
    T = targets.get(target, args.targets_file or ()).tvm_target()
    found, cpu, why = zoo_database(SHIPPED, target, model_name, "int8", args.batch, T)
    if found is not None and cpu == target_cpu(T):
        print(f"using the committed tuned schedules from {found} (--untuned to ignore)")
        return found
    if found is not None:
        print(f"using the committed schedules tuned on {cpu} ({found}): none were tuned on this "
              f"CPU ({target_cpu(T)}), so they compute the same but are not tuned for it "
              f"(`tvmptq tune` to tune, --untuned to ignore)")
        return found
    shipped = shipped_folder(target, model_name, "int8", args.batch, T)
    if shipped.parent.parent == SHIPPED and any(SHIPPED.glob(f"*/{shipped.name}")):
        print(f"not using the committed tuning databases: {why}; compiling untuned (`tvmptq tune` to tune)")
    return None
