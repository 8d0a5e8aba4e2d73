import time, collections
from evalbox import Executor, Plan
from evalbox.process import warm, sandbox as sbx
from evalbox.executor import executor as exm
acc = collections.defaultdict(float)
def wrap(cls, name, label):
    f = getattr(cls, name)
    def g(*a, **k):
        t = time.perf_counter()
        try: return f(*a, **k)
        finally: acc[label] += time.perf_counter() - t
    setattr(cls, name, g)
wrap(warm._Spawner, "call", "exchange with the launcher (spawner thread)")
wrap(sbx.Sandbox, "__init__", "Sandbox.__init__ (prepare + start)")
wrap(exm.Executor, "poll", "Executor.poll")
wrap(sbx.Sandbox, "close", "Sandbox.close")
N = 300
with Executor() as ex:
    p = Plan(["/bin/true"])
    for _ in range(20): ex.run(p)
    acc.clear(); t = time.perf_counter()
    for _ in range(N): ex.run(p)
    tot = time.perf_counter() - t
print(f"total {tot/N*1000:.3f} ms per run")
for k, v in acc.items(): print(f"  {k}: {v/N*1000:.3f} ms")
