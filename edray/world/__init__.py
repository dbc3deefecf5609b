"""The skills world: an offline benchmark with ground truth, and its teacher.

Scenes of colored shapes (:mod:`.scene`), atomic skills and a closed language of checkable reasoning
steps (:mod:`.skills`), source tasks, target tasks and the general suite (:mod:`.tasks`), their rows as
Arrow tables (:mod:`.pool`), the Ray Data job that writes them (:mod:`.job`), and the world teacher,
an engine with privileged access to each image's scene graph (:mod:`.teacher`).
"""
