"""A program with third-party packages: kakoi builds its environment from
requirements.txt once, then mounts it read-only into every run (no network needed)."""

import numpy as np
import pandas as pd

rng = np.random.default_rng(seed=42)
df = pd.DataFrame({"group": rng.choice(["a", "b", "c"], size=1000), "value": rng.normal(size=1000)})
summary = df.groupby("group")["value"].agg(["count", "mean", "std"]).round(3)
print(f"numpy {np.__version__}, pandas {pd.__version__}")
print(summary.to_string())
