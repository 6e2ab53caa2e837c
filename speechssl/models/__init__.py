"""Model families (HuBERT, wav2vec 2.0, w2v-BERT, data2vec): a front end plus core parts."""
