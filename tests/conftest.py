import os
import warnings

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def digits_graph():
    import tvmptq
    model = tvmptq.load("digits_resnet")
    return model, tvmptq.prepare(model)
