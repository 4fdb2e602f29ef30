"""Fine-tuning a pretrained GPT: classification, instruction following, preference (DPO)."""
