"""Framework integrations (optional extras): they depend on the core, never the reverse."""

import warnings

# e3nn (used by mace) compiles TorchScript at import and warns about its own annotations, and
# torch.load warns about an environment variable some machines set: noise for ltau's users.
warnings.filterwarnings("ignore", message="The TorchScript type system", category=UserWarning)
warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
