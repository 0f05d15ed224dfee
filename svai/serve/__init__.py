"""The local consultation app behind `svai serve` (the optional `svai[app]` extra).

One page and a small JSON API on 127.0.0.1 (`svai.serve.app`, Starlette): upload a photo,
choose the model, procedures, intensity and composite, compare before and simulation with a
slider, save a stamped before | simulation PNG. The pieces below the web layer need no web
library: `photo` (decode, frame the face, paste back), `simulate` (models and settings),
`export` (the stamped PNG), `audit` (one JSON line per simulation), `store` (what is held in
memory). See docs/serve.md.
"""
