"""Build tiny random-weight GPT-SoVITS v2 models with the package's own model classes.

Run with the GPT-SoVITS environment's Python (``.venv-gptsovits``):
``python make_tiny_models.py OUT_DIR``. It writes the layout ``gpt-sovits-api-v2``
loads through its ``tts_infer.yaml``::

    OUT_DIR/gpt.ckpt                 GPT (text-to-semantic): {"weight", "config", "info"}
    OUT_DIR/sovits.pth               SoVITS v2: {"weight", "config", "info"}, head b"01"
    OUT_DIR/chinese-hubert-base/     config.json, preprocessor_config.json, pytorch_model.bin
    OUT_DIR/chinese-roberta-wwm-ext-large/  config.json, tokenizer.json, pytorch_model.bin
    OUT_DIR/tts_infer.yaml           a ``custom`` section pointing at all of the above

The voice is noise: the point is that the real loading and request path run. Real
weights keep the same layout with the released files in place of these.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import sys
from pathlib import Path

import torch
import yaml
from gpt_sovits_cpufast.runtime import PACKAGE_ROOT, configure_runtime


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    configure_runtime()  # puts GPT_SoVITS on sys.path and chdirs to the data dir
    torch.manual_seed(0)
    pretrained = PACKAGE_ROOT / "GPT_SoVITS" / "pretrained_models"
    configs = PACKAGE_ROOT / "GPT_SoVITS" / "configs"

    # HuBERT: SoVITS projects 768-dim content features, so hidden_size stays 768.
    from feature_extractor.cnhubert import HubertInferenceModel
    from feature_extractor.cnhubert import _load_config as hubert_config

    hubert = out / "chinese-hubert-base"
    hubert.mkdir(exist_ok=True)
    config = json.loads((pretrained / "chinese-hubert-base" / "config.json").read_text())
    config.update(
        num_hidden_layers=1,
        intermediate_size=64,
        num_attention_heads=2,
        conv_dim=[32] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=16,
    )
    (hubert / "config.json").write_text(json.dumps(config))
    shutil.copy(pretrained / "chinese-hubert-base" / "preprocessor_config.json", hubert)
    torch.save(
        HubertInferenceModel(hubert_config(str(hubert))).state_dict(), hubert / "pytorch_model.bin"
    )

    # BERT (only Chinese text uses its features): one small layer, the real tokenizer.
    from text.chinese_bert import BertForMaskedLM
    from text.chinese_bert import _load_config as bert_config

    bert = out / "chinese-roberta-wwm-ext-large"
    bert.mkdir(exist_ok=True)
    config = json.loads((pretrained / "chinese-roberta-wwm-ext-large" / "config.json").read_text())
    config.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    (bert / "config.json").write_text(json.dumps(config))
    shutil.copy(pretrained / "chinese-roberta-wwm-ext-large" / "tokenizer.json", bert)
    torch.save(BertForMaskedLM(bert_config(str(bert))).state_dict(), bert / "pytorch_model.bin")

    # GPT: the v2 text-to-semantic decoder, two small layers. Its transformer stack
    # ("model.h.*") is built on its own: the package builds it together with a
    # training metric (torchmetrics) that inference does not install.
    from AR.models.t2s_lightning_module import Text2SemanticLightningModule
    from AR.modules.transformer import TransformerEncoder, TransformerEncoderLayer

    s1 = yaml.safe_load((configs / "s1longer-v2.yaml").read_text())
    dim, layers = 64, 2
    s1["model"].update(
        embedding_dim=dim, hidden_dim=dim, head=2, linear_units=4 * dim, n_layer=layers
    )
    # Random weights rarely pick EOS: cap the decode at 2 s of semantic tokens.
    s1["data"]["max_sec"] = 2
    gpt = Text2SemanticLightningModule(
        s1, "****", is_train=False, build_t2s_transformer=False, build_h_module=False
    )
    stack = TransformerEncoder(
        TransformerEncoderLayer(
            d_model=dim,
            nhead=2,
            dim_feedforward=4 * dim,
            dropout=0.1,
            batch_first=True,
            norm_first=False,
        ),
        num_layers=layers,
        norm=None,
    )
    weight = dict(gpt.state_dict())
    weight.update({f"model.h.{k}": v for k, v in stack.state_dict().items()})
    torch.save({"weight": weight, "config": s1, "info": "tiny-random"}, out / "gpt.ckpt")

    # SoVITS v2: one layer and a narrow decoder, the real sample rate and hop (32 kHz,
    # 640). Its MRTE block is built at fixed widths (192 channels, 512 style), so those stay.
    from module.models import SynthesizerTrn

    s2 = json.loads((configs / "s2.json").read_text())
    s2["model"].update(
        filter_channels=64,
        n_heads=2,
        n_layers=1,
        upsample_initial_channel=32,
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3, 5]],
        version="v2",
    )
    data = s2["data"]
    sovits = SynthesizerTrn(
        data["filter_length"] // 2 + 1,
        s2["train"]["segment_size"] // data["hop_length"],
        n_speakers=data["n_speakers"],
        **copy.deepcopy(s2["model"]),
    )
    weight = {k: v for k, v in sovits.state_dict().items() if "enc_q" not in k}
    # A fresh codebook waits for k-means on training data; a trained one is marked inited.
    for key in [k for k in weight if k.endswith("_codebook.inited")]:
        weight[key] = torch.ones_like(weight[key])
    for key in [k for k in weight if k.endswith("_codebook.embed")]:
        weight[key] = torch.randn_like(weight[key])
    buffer = io.BytesIO()
    torch.save({"weight": weight, "config": s2, "info": "tiny-random"}, buffer)
    # The first two bytes name the version instead of the zip magic ("01": v2).
    (out / "sovits.pth").write_bytes(b"01" + buffer.getvalue()[2:])

    (out / "tts_infer.yaml").write_text(
        yaml.safe_dump(
            {
                "custom": {
                    "bert_base_path": str(bert),
                    "cnhuhbert_base_path": str(hubert),
                    "device": "cpu",
                    "is_half": False,
                    "t2s_weights_path": str(out / "gpt.ckpt"),
                    "version": "v2",
                    "vits_weights_path": str(out / "sovits.pth"),
                }
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
