"""Classification fine-tuning (the book's chapter 6): a GPT that tells spam from ham.

    read the SMS Spam Collection (label TAB text)    data.read_labeled_tsv
    undersample "ham" to as many as "spam" (seeded)  data.balance
    split 70 / 10 / 20 (seeded shuffle)              data.split_examples
    tokenize with GPT-2's BPE, pad with 50256        data.ClassificationDataset
    swap the vocabulary head for a 2-class head      model.new_classifier
    train the last block, final norm and head        model.set_trainable / nn.apply_lora
    AdamW, lr 5e-5, weight decay 0.1, 5 epochs       training.train_classifier_simple
    accuracies, files, the whole run                 run.finetune_classifier
    label a new message                              model.classify

    tinygpt finetune-classifier --data SMSSpamCollection.tsv --model gpt2 --out runs/spam
    tinygpt classify --model runs/spam "You won a prize!"
"""

from tinygpt.finetune.classify.checkpoint import load_classifier, save_classifier
from tinygpt.finetune.classify.data import (
    LABELS,
    ClassificationDataset,
    download_sms_spam,
    read_labeled_tsv,
    sms_spam_splits,
)
from tinygpt.finetune.classify.model import Classifier, classify, new_classifier
from tinygpt.finetune.classify.run import ClassifierTrainConfig, finetune_classifier

__all__ = ["LABELS", "ClassificationDataset", "Classifier", "ClassifierTrainConfig",
           "classify", "download_sms_spam", "finetune_classifier", "load_classifier",
           "new_classifier", "read_labeled_tsv", "save_classifier", "sms_spam_splits"]
