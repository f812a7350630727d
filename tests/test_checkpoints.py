"""The checkpoint writer's own settings (resume, damage and sealing run end to end in test_train,
test_hardening and test_cloud_storage)."""

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from helpers import load_config
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jvision.data import pipeline
from jvision.safety import checkpoints


def test_one_process_writes_each_array_whole_with_orbax_metadata_kept(tmp_path):
    """The workaround in `write_each_array_whole_in_one_process` reads one attribute of Orbax's
    handler: this fails when Orbax renames it, instead of silently dropping its metadata store
    (which restores typed PRNG keys)."""
    assert ocp.type_handlers.get_type_handler(jax.Array)._array_metadata_store is not None
    checkpoints.write_each_array_whole_in_one_process()
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    assert handler._use_replica_parallel is False
    assert handler._array_metadata_store is not None

    # Arrays replicated over the 8 devices and a typed key come back as they were saved.
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
    tree = {
        "w": jax.device_put(jnp.arange(24.0).reshape(4, 6), replicated),
        "key": jax.device_put(jax.random.key(3), replicated),
    }
    with ocp.StandardCheckpointer() as saver:
        saver.save(tmp_path / "c", tree)
    with ocp.StandardCheckpointer() as reader:
        back = reader.restore(tmp_path / "c", jax.tree.map(ocp.utils.to_shape_dtype_struct, tree))
    np.testing.assert_array_equal(back["w"], tree["w"])
    assert back["w"].sharding == replicated
    assert jnp.issubdtype(back["key"].dtype, jax.dtypes.prng_key)
    key_data = jax.random.key_data
    np.testing.assert_array_equal(key_data(back["key"]), key_data(tree["key"]))


def test_saving_never_asks_for_the_preemption_sync_point(tmp_path, monkeypatch):
    """Orbax asks it from `save` and from its finalize thread with the saved step, which moves
    the process's position in JAX's sync protocol and can make one process miss the agreed stop
    (a rare hang of the 2-process test). Only the training loop may ask."""
    asked = []

    def record(step):
        asked.append((threading.current_thread().name, step))
        return False

    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", record)
    config = load_config("vae_mnist", "tiny")
    data, _ = pipeline.host_batches(config)
    state = nnx.State({"model": {"w": jnp.ones(3)}, "opt": {"count": jnp.zeros((), jnp.int32)}})
    ckpts = checkpoints.Checkpoints(epath.Path(tmp_path), keep=2)
    for step in (1, 2):
        ckpts.save(step, state, data, config.to_dict())
    ckpts.wait()
    ckpts.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
    assert asked == []


def test_closing_after_a_failed_write_waits_for_the_others_then_removes_the_save(tmp_path):
    """Orbax's wait raises at the first failed write while the others go on writing into the
    save's temporary directory. `close` waits for every write before it removes the save: nothing
    a late write makes stays behind. `wait_for_every_write` reads Orbax's futures from a private
    attribute: this also fails when Orbax moves it."""
    config = load_config("vae_mnist", "tiny")
    data, _ = pipeline.host_batches(config)
    state = nnx.State({"model": {"w": jnp.ones(3)}, "opt": {"count": jnp.zeros((), jnp.int32)}})
    ckpts = checkpoints.Checkpoints(epath.Path(tmp_path), keep=2)
    ckpts.save(1, state, data, config.to_dict())
    ckpts.wait()
    writes = ckpts.manager._checkpointer._async_manager._commit_futures
    assert writes and all(callable(write.result) for write in writes)  # Where Orbax keeps them.

    # A save cut short: its first write failed; a second one writes into its directory later.
    unfinished = tmp_path / "checkpoints" / f"2{checkpoints.TEMPORARY_MARK}"
    unfinished.mkdir()

    def write_late():
        time.sleep(0.3)
        (unfinished / "opt").mkdir(parents=True, exist_ok=True)  # As tensorstore does.
        (unfinished / "opt" / "_sharding").write_text("{}")

    writer = threading.Thread(target=write_late)

    class Failed:
        def result(self, timeout=None):
            raise OSError(28, "No space left on device")

    class StillWriting:
        def result(self, timeout=None):
            writer.join(timeout)

    ckpts.manager._checkpointer._async_manager._commit_futures = [Failed(), StillWriting()]
    writer.start()
    ckpts.close()
    writer.join()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
