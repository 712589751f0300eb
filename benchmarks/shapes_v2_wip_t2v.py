"""Two text-to-video samples of the work-in-progress 64x64 model (training/shapes-v2-wip), every third frame:
docs/results/shapes_v2_wip_t2v.png. Run from the repo root: OMP_NUM_THREADS=1 python benchmarks/shapes_v2_wip_t2v.py"""
import numpy as np, cv2, motiontransfer, time
t = time.time()
rows = []
for i, p in enumerate(["a red star on a white background", "a blue square moving right on a black background"]):
    r = motiontransfer.text_to_video(p, seed=i, model="training/shapes-v2-wip", steps=25, quiet=True)
    rows.append(np.concatenate(list(r.frames[::3]), 1))
cv2.imwrite("docs/results/shapes_v2_wip_t2v.png", cv2.resize(np.concatenate(rows, 0)[..., ::-1], None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))
print("s", time.time() - t)
