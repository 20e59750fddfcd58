"""Target descriptions, compilation, tuning and profiling of tvmptq integer programs."""
